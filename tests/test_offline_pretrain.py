"""Pretraining the offline backbone: packing, learning, saving, and skipping a build that exists."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from helpers import tiny_pretrain_settings
from transformers import AutoTokenizer, FalconForCausalLM

from autocritic.offline.pretrain import (
    BUILD_INFO,
    PackedDocuments,
    build_backbone,
    train_model,
)
from autocritic.offline.tasks import document_text, iter_documents
from autocritic.offline.tokenizer import train_tokenizer

TINY = tiny_pretrain_settings()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(
        (document_text(d) for d in itertools.islice(iter_documents(1, TINY.mix), 300)), vocab_size=300
    )


def test_rows_hold_whole_documents_and_train_only_on_answers(tokenizer):
    rows = list(itertools.islice(iter(PackedDocuments(tokenizer, TINY)), 20))
    for row in rows:
        ids, labels, mask = row["input_ids"], row["labels"], row["attention_mask"].bool()
        assert ids.shape == labels.shape == (TINY.seq_len,)
        assert (ids[~mask] == tokenizer.pad_token_id).all() and (labels[~mask] == -100).all() and mask[0]
        assert ids[mask][-1] == tokenizer.eos_token_id  # a row ends with a finished document
        trained = labels != -100
        assert (labels[trained] == ids[trained]).all() and 0 < trained.sum() < mask.sum()
    filled = sum(int(r["attention_mask"].sum()) for r in rows) / (len(rows) * TINY.seq_len)
    assert filled > 0.85
    text = tokenizer.decode(rows[0]["labels"][rows[0]["labels"] != -100])
    assert "What is" not in text and "Human:" not in text


def test_short_run_lowers_loss_and_reloads_identically(tokenizer, tmp_path):
    model, stats = train_model(TINY, tokenizer, progress=False)
    assert stats["steps"] == TINY.max_steps and stats["loss_last"] < stats["loss_first"] - 0.5
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = FalconForCausalLM.from_pretrained(tmp_path)
    batch = AutoTokenizer.from_pretrained(tmp_path)(
        ["Question: What is 12+7?\nAnswer: 19"], return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_build_is_skipped_with_same_settings_and_redone_when_they_change(tmp_path):
    settings = dataclasses.replace(TINY, max_steps=3)
    out = build_backbone(settings, tmp_path / "backbone", progress=False)
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["fingerprint"] == settings.fingerprint() and info["steps"] == 3
    assert (
        AutoTokenizer.from_pretrained(out).eos_token_id
        == FalconForCausalLM.from_pretrained(out).config.eos_token_id
    )

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_backbone(settings, out, progress=False) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp

    changed = dataclasses.replace(TINY, max_steps=4)
    build_backbone(changed, out, progress=False)
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["fingerprint"] == changed.fingerprint() != settings.fingerprint() and info["steps"] == 4
