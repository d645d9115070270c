"""Pretraining the offline backbone: packing, learning, saving, and skipping a build that exists."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch
import transformers
from helpers import tiny_pretrain_settings
from transformers import AutoTokenizer, FalconForCausalLM

from autocritic.offline import pretrain
from autocritic.offline.documents import document_text, iter_documents
from autocritic.offline.pinned import NUMERICS
from autocritic.offline.pretrain import (
    BUILD_INFO,
    PackedDocuments,
    PretrainModule,
    PretrainSettings,
    build_backbone,
    build_fingerprint,
    train_model,
)
from autocritic.offline.replay import ReplaySettings
from autocritic.offline.tokenizer import train_tokenizer
from autocritic.versions import other_releases

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


def test_short_run_lowers_loss_and_reloads_identically(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "LOSS_CURVE_STEPS", 5)
    model, stats = train_model(TINY, tokenizer, progress=False)
    assert stats["steps"] == TINY.max_steps and stats["loss_last"] < stats["loss_first"] - 0.5
    curve = stats["loss_curve"]
    assert len(curve) == TINY.max_steps // 5 and curve[-1] < curve[0]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = FalconForCausalLM.from_pretrained(tmp_path)
    batch = AutoTokenizer.from_pretrained(tmp_path)(
        ["Question: What is 12+7?\nAnswer: 19"], return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_two_runs_give_the_same_weights_bit_for_bit(tokenizer):
    """The learning rate once read the wall clock right after warmup: two runs of the default chain gave
    different backbones (13.7% vs 7.0% right answers in the critic data)."""
    first, _ = train_model(TINY, tokenizer, progress=False)
    second, _ = train_model(TINY, tokenizer, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))


class FakeClock:
    def __init__(self, seconds_per_call: float):
        self.now, self.step = 0.0, seconds_per_call

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_schedule_never_reads_the_clock(monkeypatch):
    """A slow machine builds the same weights: the learning rate is a function of the step alone."""
    settings = dataclasses.replace(TINY, warmup_steps=10, max_steps=1000, max_minutes=5.0)
    monkeypatch.setattr(pretrain.time, "perf_counter", FakeClock(100.0))
    module = PretrainModule(torch.nn.Linear(1, 1), settings)
    module.configure_optimizers()
    by_steps = [
        settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 990))
        for step in range(10, 1000)
    ]
    assert [module.schedule(step) for step in range(10, 1000)] == pytest.approx(by_steps)


@pytest.mark.parametrize(("seconds_per_step", "cap", "stops"), [(0.05, 5.0, False), (0.1, 5.0, True), (0.1, None, False)])
def test_a_cap_the_run_would_exceed_stops_it_with_a_clear_error(monkeypatch, caplog, seconds_per_step, cap, stops):
    """4000 steps at 0.05 s take 3.3 min (under a 5-minute cap), at 0.1 s 6.7 min (over it)."""
    settings = dataclasses.replace(TINY, max_steps=4000, max_minutes=cap)
    module = PretrainModule(torch.nn.Linear(1, 1), settings)
    module.started = 0.0
    monkeypatch.setattr(pretrain.time, "perf_counter", lambda: 500 * seconds_per_step)
    caplog.set_level("INFO", logger="autocritic")
    module.report(499)  # not a report step: nothing happens
    if stops:
        with pytest.raises(pretrain.PretrainTooSlow, match="over offline.pretrain.max_minutes=5.0"):
            module.report(500)
    else:
        module.report(500)
    assert "pretraining: step 500 of 4000" in caplog.text and "min left" in caplog.text


def test_the_cap_does_not_change_the_fingerprint():
    """The weights never depend on it, so builds made when the default cap was 20 minutes stay valid."""
    assert dataclasses.replace(PretrainSettings(), max_minutes=5.0).fingerprint() == PretrainSettings().fingerprint()
    assert PretrainSettings().fingerprint() == "cc88a5d44ea28662"  # the default's settings


def test_the_pinned_numerics_are_part_of_the_build_fingerprint():
    """A backbone built with a machine's own numerics is built again under the pinned ones (and its critic data)."""
    assert build_fingerprint(PretrainSettings()) == PretrainSettings().fingerprint()
    assert build_fingerprint(PretrainSettings(), NUMERICS) == "bfc21bf1e960415a"  # the default backbone's build_info


def test_one_draw_is_a_build_as_it_was_before_draws_existed():
    """Presets that train their seed alone keep their builds; the default's draws make another fingerprint."""
    alone = dataclasses.replace(PretrainSettings(), seed=3, draws=1)
    assert alone.fingerprint() == "1116c0e0ce420120"  # the seed-3 default's build_info before draws
    assert dataclasses.replace(alone, min_arithmetic=0.5).fingerprint() == alone.fingerprint()
    assert dataclasses.replace(PretrainSettings(), min_arithmetic=0.5).fingerprint() != PretrainSettings().fingerprint()
    assert PretrainSettings(seed=3).draw(1) == dataclasses.replace(alone, seed=4)


def skills_by_draw(monkeypatch, skills: list[float]) -> list[int]:
    """Each draw's arithmetic, in order, without evaluating the toy model; returns one entry per draw judged."""
    asked = []

    def measured(model, tokenizer):
        asked.append(len(asked))
        return skills[len(asked) - 1]

    monkeypatch.setattr(pretrain, "few_shot_arithmetic", measured)
    return asked


def test_a_draw_that_learnt_no_arithmetic_is_set_aside_for_the_next_seed(tmp_path, monkeypatch, caplog):
    asked = skills_by_draw(monkeypatch, [0.05, 0.3, 0.9])
    settings = dataclasses.replace(TINY, seed=5, max_steps=3, draws=3, min_arithmetic=0.2)
    caplog.set_level("WARNING", logger="autocritic")
    out = build_backbone(settings, tmp_path / "gated", progress=False)

    assert len(asked) == 2  # the second draw reached the bar: no third
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["fingerprint"] == settings.fingerprint() and info["seed"] == 6
    assert [(d["seed"], d["few_shot_arithmetic"]) for d in info["draws"]] == [(5, 0.05), (6, 0.3)]
    assert "seed 5 learnt little arithmetic (few-shot greedy accuracy 5.0%" in caplog.text
    assert "Pretraining seed 6 instead (draw 2 of 3" in caplog.text
    alone = build_backbone(settings.draw(1), tmp_path / "alone", progress=False)
    assert (out / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (alone / "tokenizer.json").read_bytes()


def test_when_no_draw_reaches_the_bar_the_best_is_kept_and_the_user_told(tmp_path, monkeypatch, caplog):
    skills_by_draw(monkeypatch, [0.05, 0.15, 0.1])
    settings = dataclasses.replace(TINY, seed=5, max_steps=3, draws=3, min_arithmetic=0.2)
    caplog.set_level("WARNING", logger="autocritic")
    out = build_backbone(settings, tmp_path / "gated", progress=False)

    info = json.loads((out / BUILD_INFO).read_text())
    assert info["seed"] == 6 and len(info["draws"]) == 3
    assert "None of the 3 draws reached the bar; keeping the best, seed 6 (15.0%)" in caplog.text
    assert "offline.pretrain.draws=5" in caplog.text
    alone = build_backbone(settings.draw(1), tmp_path / "alone", progress=False)
    assert (out / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()


def test_a_build_records_its_library_versions_and_warns_when_they_are_not_the_locks(tmp_path, monkeypatch, caplog):
    settings = dataclasses.replace(TINY, max_steps=2)
    caplog.set_level("WARNING", logger="autocritic")
    monkeypatch.setattr(pretrain, "other_releases", lambda versions: [])  # as if this were the documented build
    out = build_backbone(settings, tmp_path / "locked", progress=False)
    versions = json.loads((out / BUILD_INFO).read_text())["versions"]
    assert versions["transformers"] == transformers.__version__ and set(versions) == {"torch", "transformers", "tokenizers"}
    assert "another tiny Falcon" not in caplog.text

    monkeypatch.setattr(pretrain, "other_releases", lambda versions: other_releases(versions, {"transformers": "0.0.1"}))
    build_backbone(settings, tmp_path / "other", progress=False)
    [warning] = [r.getMessage() for r in caplog.records if "another tiny Falcon" in r.getMessage()]
    assert f"transformers {transformers.__version__} (the documented build: 0.0.1) installed" in warning
    assert "pip install -c constraints.txt" in warning


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


def test_a_kind_of_weight_zero_changes_neither_the_documents_nor_the_fingerprint():
    without = {kind: weight for kind, weight in PretrainSettings().mix.items() if kind != "copy"}
    listed = {**without, "copy": 0.0}  # listed last, as a kind added to the config at 0 would be
    assert PretrainSettings(mix=listed).fingerprint() == PretrainSettings(mix=without).fingerprint()
    assert ReplaySettings(mix=listed).fingerprint() == ReplaySettings(mix=without).fingerprint()
    assert PretrainSettings(mix={**listed, "copy": 0.1}).fingerprint() != PretrainSettings(mix=without).fingerprint()
    assert list(itertools.islice(iter_documents(1, without), 500)) == list(itertools.islice(iter_documents(1, listed), 500))


def test_a_family_whose_problems_change_changes_the_fingerprint_of_the_worlds_that_draw_it(monkeypatch):
    """A countdown world built from other problems must be rebuilt, and a world without countdowns must not."""
    countdown = PretrainSettings(mix={"countdown": 0.85, "arithmetic": 0.15})
    before = countdown.fingerprint(), PretrainSettings().fingerprint()
    monkeypatch.setitem(pretrain.FAMILY_DEFINITIONS, "countdown", {"numbers": [2]})
    assert countdown.fingerprint() != before[0]
    assert PretrainSettings().fingerprint() == before[1]


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"arithmetic": 1, "poems": 1}, r"unknown document kinds \['poems'\]"),
        ({"arithmetic": 1, "copy": -0.1}, "weights must be numbers ≥ 0"),
        ({"arithmetic": 0}, "at least one above 0"),
        ({"arithmetic": "lots"}, "weights must be numbers"),
    ],
)
def test_a_bad_mix_is_refused(mix, message):
    for settings in (PretrainSettings, ReplaySettings):
        with pytest.raises(ValueError, match=message):
            settings(mix=mix)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 130}, "the width must be a multiple of the heads"),
        ({"num_kv_heads": 3}, "the heads a multiple of the key-value heads"),
        ({"lr": -1.0}, r"lr=-1.0 must be > 0"),
        ({"max_steps": 0}, r"max_steps=0 must be ≥ 1"),
        ({"max_minutes": 0.0}, r"max_minutes=0.0 must be > 0"),
        ({"draws": 0}, r"draws=0 must be ≥ 1"),
        ({"min_arithmetic": 1.5}, r"min_arithmetic=1.5: an accuracy, between 0 and 1"),
        ({"mix": {"countdown": 1.0}}, r"draws=3 judges each draw by its arithmetic, .* set draws=1"),
    ],
)
def test_settings_out_of_range_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        PretrainSettings(**change)


def test_a_rebuild_that_fails_leaves_the_previous_build_in_place(tmp_path, monkeypatch):
    settings = dataclasses.replace(TINY, max_steps=3)
    out = build_backbone(settings, tmp_path / "backbone", progress=False)
    weights = (out / "model.safetensors").read_bytes()

    def killed(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(pretrain, "train_model", killed)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_backbone(dataclasses.replace(TINY, max_steps=4), out, progress=False)
    assert pretrain.is_built(out, settings.fingerprint())
    assert (out / "model.safetensors").read_bytes() == weights
