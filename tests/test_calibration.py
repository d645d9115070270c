"""Platt scaling fitted on the validation split and folded into the head: calibrated probabilities, same rankings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import compose_train, tiny_overrides

from autocritic.model.head import CriticHead, HeadSettings
from autocritic.training import run
from autocritic.training.calibration import fit_platt, fold_into_head

HEADS = {
    "linear": HeadSettings(kind="linear", confidence=True),
    "mlp": HeadSettings(kind="mlp", hidden_dim=16, confidence=True),
    "checker": HeadSettings(kind="attention", hidden_dim=16, window=4, tokens=True, members=3, confidence=True),
}


def test_platt_scaling_recovers_a_known_scale_and_offset():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(20_000, generator=generator)
    labels = (torch.rand(20_000, generator=generator) < torch.sigmoid(2.0 * scores - 1.0)).float()
    scale, offset = fit_platt(scores, labels)
    assert scale == pytest.approx(2.0, abs=0.1) and offset == pytest.approx(-1.0, abs=0.1)


@pytest.mark.parametrize("kind", list(HEADS))
def test_folding_maps_every_score_to_scale_times_score_plus_offset(kind):
    torch.manual_seed(0)
    head = CriticHead(8, HEADS[kind], vocab_size=20).eval()
    window = HEADS[kind].window
    states = torch.randn(5, window, 8) if window > 1 else torch.randn(5, 8)
    mask = torch.ones(5, window, dtype=torch.bool) if window > 1 else None
    ids = torch.randint(0, 20, (5, window)) if HEADS[kind].tokens else None
    confidence = torch.randn(5, 2)
    with torch.no_grad():
        before = head(states, confidence, mask, ids)
        fold_into_head(head, 0.5, -2.0)
        after = head(states, confidence, mask, ids)
    assert torch.allclose(after, 0.5 * before - 2.0, atol=1e-5)


def test_a_calibrated_run_predicts_the_validation_base_rate(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """At the log loss's optimum in the offset, the mean predicted probability equals the share of right rows."""
    seen = {}
    original = run.CriticDataModule

    class Recording(original):
        def setup(self, stage=None):
            super().setup(stage)
            seen["datamodule"] = self

    monkeypatch.setattr(run, "CriticDataModule", Recording)
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), "phase.max_epochs=2", "objective.positive_weight=4"])
    run.train(cfg)
    from autocritic.model.export import load_critic

    datamodule = seen["datamodule"]
    critic = load_critic(f"{cfg.paths.run_dir}/export").model
    batches = list(datamodule.loader("val", shuffle=False))
    with torch.no_grad():
        scores = torch.cat([critic.score_features(b["features"]) if "features" in b else
                            critic(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                   prompt_lengths=b["prompt_lengths"]).score for b in batches])
    labels = torch.cat([b["target"] for b in batches])
    assert torch.sigmoid(scores).mean().item() == pytest.approx(labels.mean().item(), abs=2e-3)


def test_calibrate_false_leaves_the_scores_alone(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "Calibration", lambda: calls.append(1))
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), "phase.max_epochs=1", "objective.calibrate=false"])
    run.train(cfg)
    assert not calls
    assert dataclasses.fields(HeadSettings)  # (the head settings are untouched by the objective's switch)
