"""Feature cache of the frozen phase: each example's final decoder state, computed once, reused every epoch.

The key hashes everything the features depend on (backbone weights and config, tokenizer, data files, template,
max length, dtype); any change gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from rich.progress import track
from safetensors.torch import load_file, save_file

from autocritic.data.datamodule import SPLITS, CriticDataModule
from autocritic.model.critic import CriticModel


def fingerprint_path(path: str) -> dict:
    """Size and mtime of a file or of a directory's files: cheap, and changes whenever content is rewritten."""
    p = Path(path).expanduser()
    if not p.exists():
        return {"name": path}
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {"name": str(p.resolve()), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


def cache_key(backbone_source: str, data_files: list[str], template: str, max_length: int, extra: dict) -> str:
    description = {
        "backbone": fingerprint_path(backbone_source),
        "data": [fingerprint_path(f) for f in data_files],
        "template": template,
        "max_length": max_length,
        **extra,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


@torch.no_grad()
def compute_features(critic: CriticModel, datamodule: CriticDataModule, split: str, device: torch.device) -> torch.Tensor:
    """(N, S, H) fp32 final states at the last real token; S = 2 for pairwise (chosen, rejected)."""
    chunks = []
    loader = datamodule.token_loader(split)
    for batch in track(loader, description=f"Caching {split} features", total=len(loader), transient=True):
        hidden = critic(batch["input_ids"].to(device), batch["attention_mask"].to(device)).hidden.float().cpu()
        n_seq = 2 if datamodule.pairwise else 1
        chunks.append(hidden.reshape(n_seq, -1, hidden.shape[-1]).transpose(0, 1))  # (B, S, H)
    return torch.cat(chunks)


def load_or_compute(
    critic: CriticModel, datamodule: CriticDataModule, cache_dir: str | Path, key: str, device: torch.device
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features per split and whether they came from the cache. Written atomically."""
    file = Path(cache_dir) / f"{key}.safetensors"
    if file.is_file():
        features = load_file(str(file))
        if all(len(features.get(s, ())) == len(datamodule.encoded[s]) for s in SPLITS if datamodule.encoded.get(s)):
            return features, True
    was_training = critic.training
    critic.eval()
    # DataLoader iterators draw from the global RNG: a cache miss must not change the run that follows it.
    with torch.random.fork_rng(devices=[]):
        features = {s: compute_features(critic, datamodule, s, device) for s in SPLITS if datamodule.encoded.get(s)}
    critic.train(was_training)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
    tmp.replace(file)
    return features, False
