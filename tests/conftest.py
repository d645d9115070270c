"""Shared fixtures: a tiny Falcon and tokenizer built on the spot (no downloads), tiny data files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a shared 2-core box: one thread each avoids oversubscription (a 30 ms generate took 2 s).
torch.set_num_threads(1)

CHARS = list("0123456789+-*/^().=?: QAabcdefghijklmnopqrstuvwxyz\n")


def build_tiny_backbone(out_dir: Path, seed: int = 0) -> Path:
    """A character-level tokenizer and a 2-layer, 64-dim Falcon saved with `save_pretrained`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import FalconConfig, FalconForCausalLM, PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1} | {c: i + 2 for i, c in enumerate(CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()  # decode "ab" as "ab", not "a b"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = FalconConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        alibi=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    FalconForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_rows(n: int, seed: int) -> list[dict]:
    """Pointwise rows whose label is learnable from the text: is the written sum right?"""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        right = rng.random() < 0.5
        answer = a + b if right else a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"Q: {a}+{b}=? A:", "response": f" {answer}", "label": int(right)})
    return rows


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_falcon"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_data")
    return {
        "train": write_jsonl(root / "train.jsonl", arithmetic_rows(64, 0)),
        "val": write_jsonl(root / "val.jsonl", arithmetic_rows(32, 1)),
        "test": write_jsonl(root / "test.jsonl", arithmetic_rows(32, 2)),
    }


@pytest.fixture(scope="session")
def tiny_export(tiny_backbone, tmp_path_factory) -> Path:
    """An export of the tiny Falcon with an untrained critic head (frozen backbone: the export refers to it)."""
    from autocritic.model.backbone import load_backbone, load_tokenizer
    from autocritic.model.critic import CriticModel
    from autocritic.model.export import save_critic
    from autocritic.model.head import HeadSettings

    torch.manual_seed(0)
    model = CriticModel(load_backbone(str(tiny_backbone)), head_settings=HeadSettings())
    out = tmp_path_factory.mktemp("tiny_export") / "export"
    tokenizer = load_tokenizer(str(tiny_backbone))
    return save_critic(model, tokenizer, out, str(tiny_backbone), HeadSettings(), "{prompt}{response}", "frozen")
