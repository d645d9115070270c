"""Feature cache of the frozen phase: each example's final decoder state (the last `head.window` states, with
their mask, and their token ids for a head reading them) and the model's confidence in its response (mean and min token log-probability),
computed once, reused every epoch.

The key hashes everything the features depend on (backbone weights and config, tokenizer, data files, template,
max length, dtype); any change gives a new key, so a stale cache is never read. Stale files are never read but
stay on disk, so the directory is kept under a size (`paths.cache_max_gb`): after a new file is written, the least
recently used others are removed until it fits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from autocritic.data.datamodule import SPLITS, CriticDataModule, padded, prompt_prefix
from autocritic.model.critic import (
    CriticModel,
    confidence_features,
    decoder_of,
    feature_width,
    join_features,
    last_token_index,
    positions_from_mask,
)
from autocritic.progress import track

log = logging.getLogger("autocritic")

FEATURES = "final state + confidence"  # part of the cache key: a change of layout never reads an old file


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


@dataclass
class Ranks:
    """The processes of a data-parallel run, for computing the features once between them: this one's `rank` of
    `world`, `all_gather` (a tensor of the same shape from every rank, stacked) and `all_agree` (True on every rank
    only if True on all)."""

    rank: int
    world: int
    all_gather: Callable[[torch.Tensor], torch.Tensor]
    all_agree: Callable[[bool], bool]


@torch.no_grad()
def compute_features(
    critic: CriticModel, datamodule: CriticDataModule, split: str, device: torch.device, ranks: Ranks | None = None
) -> torch.Tensor:
    """(N, S, F) fp32 features at the last real token (`feature_width`); S = 2 for pairwise (chosen, rejected). The two
    confidence features are stored for every head: a head with `confidence=false` ignores them, and one cache
    serves both kinds of head. With `ranks`, each process computes a contiguous share of the sequences (the
    answers to one prompt are neighbours, so shares keep their shared prompts) and the shares are exchanged."""
    items = datamodule.encoded[split]
    n_seq = len(items[0]["ids"]) if items else 1
    sequences = [(item["ids"][k], item["prompt_len"][k]) for item in items for k in range(n_seq)]
    world, rank = (ranks.world, ranks.rank) if ranks else (1, 0)
    bounds = [len(sequences) * r // world for r in range(world + 1)]
    states = shared_prefix_features(
        critic,
        sequences[bounds[rank] : bounds[rank + 1]],
        device,
        datamodule.settings.eval_batch_size,
        datamodule.tokenizer.pad_token_id or 0,
        split,
    )
    if world > 1:
        log.info("%s features: rank %d of %d computed %d of %d sequences", split, rank, world, len(states), len(sequences))
        width = max(bounds[r + 1] - bounds[r] for r in range(world))
        padding = states.new_zeros(width - len(states), states.shape[1])
        gathered = ranks.all_gather(torch.cat([states, padding]).to(device)).cpu()  # (world, width, F)
        states = torch.cat([gathered[r, : bounds[r + 1] - bounds[r]] for r in range(world)])
    return states.reshape(len(items), n_seq, -1)


def shared_prefix_features(
    critic: CriticModel,
    sequences: list[tuple[list[int], int]],
    device: torch.device,
    batch_rows: int,
    pad_id: int,
    split: str = "",
) -> torch.Tensor:
    """(N, F) final state at the last token of each (ids, prompt_len) (the window ending there, for a window head)
    and the confidence features of its response tokens (positions >= prompt_len), computing each distinct prompt
    once.

    Self-generated critic data holds K answers per prompt, and the prompt (few-shot) is most of the tokens: the
    prompt runs once with the KV cache on, and only the answers run per row, attending to the cached prompt.
    Same numbers as one forward per sequence (tests/test_feature_cache.py).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (ids, prompt_len) in enumerate(sequences):
        groups.setdefault(prompt_prefix(ids, prompt_len), []).append(index)
    # Similar prompt lengths share a batch; sequences with no prompt to share run in batches of their own (a row
    # of nothing but padding would put NaN keys in the cache).
    ordered = sorted(groups.items(), key=lambda group: len(group[0]))
    batches, batch, rows = [], [], 0
    for group in ordered:
        if batch and (rows >= batch_rows or (len(group[0]) > 0) != (len(batch[-1][0]) > 0)):
            batches.append(batch)
            batch, rows = [], 0
        batch.append(group)
        rows += len(group[1])
    if batch:
        batches.append(batch)
    width = feature_width(critic.backbone.config.hidden_size, critic.window, critic.reads_tokens)
    out = torch.empty(len(sequences), width)
    for batch in track(batches, desc=f"caching {split} features", leave=False):
        members = [index for _, indices in batch for index in indices]
        answers = [sequences[index][0][len(prefix) :] for prefix, indices in batch for index in indices]
        # How many leading answer tokens still belong to the prompt (only when the prompt is the whole sequence).
        skips = [max(0, sequences[index][1] - len(prefix)) for prefix, indices in batch for index in indices]
        repeat = torch.tensor([g for g, (_, indices) in enumerate(batch) for _ in indices], device=device)
        out[members] = _features_after_prefixes(
            [prefix for prefix, _ in batch], answers, skips, repeat, critic, device, pad_id
        )
    return out


def _features_after_prefixes(prefixes, answers, skips, repeat, critic, device, pad_id) -> torch.Tensor:
    decoder = decoder_of(critic.backbone)
    answer_ids, answer_mask = padded(answers, pad_id, left=False)
    answer_ids, answer_mask = answer_ids.to(device), answer_mask.to(device)
    if not prefixes[0]:  # a batch of sequences without a shared prompt
        hidden = decoder(
            input_ids=answer_ids, attention_mask=answer_mask, position_ids=positions_from_mask(answer_mask), use_cache=False
        ).last_hidden_state
        before = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        context = None
        first_counts = False  # the first token has nothing before it
    else:
        prefix_ids, prefix_mask = (t.to(device) for t in padded(prefixes, pad_id, left=True))
        hidden, before, context = critic.hidden_after_prefixes(prefix_ids, prefix_mask, answer_ids, answer_mask, repeat)
        first_counts = True
    columns = torch.arange(answer_ids.shape[1], device=device)
    skip = torch.tensor(skips, device=device)[:, None]
    response = answer_mask.bool() & (columns >= skip) & ((columns > 0) | first_counts)
    confidence = confidence_features(critic.backbone.get_output_embeddings(), before, answer_ids, response)
    rows = torch.arange(hidden.shape[0], device=device)
    last = last_token_index(answer_mask)
    if critic.window == 1:
        return join_features(hidden[rows, last], None, confidence[rows, last]).cpu()
    states, mask, ids = critic.windows_at(hidden, answer_mask, last[:, None], context, answer_ids)
    return join_features(states[:, 0], mask[:, 0], confidence[rows, last], None if ids is None else ids[:, 0]).cpu()


def prune_cache(cache_dir: str | Path, keep: Path, max_bytes: int) -> list[Path]:
    """Remove the least recently used cache files other than `keep` until the directory's files total at most
    `max_bytes` (`keep` alone may exceed it); returns the removed ones."""
    others = sorted(
        ((f, f.stat()) for f in Path(cache_dir).glob("*.safetensors") if f != Path(keep)), key=lambda fs: fs[1].st_mtime
    )
    total = sum(stat.st_size for _, stat in others) + (Path(keep).stat().st_size if Path(keep).is_file() else 0)
    removed = []
    for file, stat in others:
        if total <= max_bytes:
            break
        total -= stat.st_size
        file.unlink(missing_ok=True)
        removed.append(file)
    return removed


def load_or_compute(
    critic: CriticModel,
    datamodule: CriticDataModule,
    cache_dir: str | Path,
    key: str,
    device: torch.device,
    ranks: Ranks | None = None,
    max_bytes: int | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features per split and whether they came from the cache. Written atomically, by rank 0 alone. With `ranks`,
    every rank reads the file only if every rank can (nodes need not share a disk), else they compute it together.
    A file read is marked as used now; after a file is written, the cache is pruned to `max_bytes` (None: never)."""
    file = Path(cache_dir) / f"{key}.safetensors"
    features = None
    if file.is_file():
        try:
            features = load_file(str(file))
        except Exception as error:  # truncated or corrupt: rebuilt below, never trusted
            log.warning("feature cache %s is unreadable (%s): computing it again", file, error)
            features = {}
        if not all(len(features.get(s, ())) == len(datamodule.encoded[s]) for s in SPLITS if datamodule.encoded.get(s)):
            features = None
    if (features is not None) if ranks is None else ranks.all_agree(features is not None):
        file.touch()  # used now: the last file pruning would remove
        return features, True
    was_training = critic.training
    critic.eval()
    # DataLoader iterators draw from the global RNG: a cache miss must not change the run that follows it.
    with torch.random.fork_rng(devices=[]):
        features = {s: compute_features(critic, datamodule, s, device, ranks) for s in SPLITS if datamodule.encoded.get(s)}
    critic.train(was_training)
    if ranks is None or ranks.rank == 0:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
        tmp.replace(file)
        if max_bytes is not None:
            removed = prune_cache(file.parent, file, max_bytes)
            if removed:
                log.info(
                    "feature cache: removed %d least recently used file(s) to stay under paths.cache_max_gb=%g",
                    len(removed), max_bytes / 1e9,
                )
    return features, False
