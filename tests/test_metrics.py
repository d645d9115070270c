"""The constant-memory metrics equal torchmetrics' list-based ones."""

import pytest
import torch
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError

from autocritic.training.metrics import BinnedCalibrationError, make_metrics, update_metrics


def test_binned_calibration_error_equals_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    ours, reference = BinnedCalibrationError(n_bins=10), BinaryCalibrationError(n_bins=10)
    for _ in range(5):
        probs = torch.rand(64, generator=generator)
        probs[:4] = torch.tensor([0.0, 0.1, 0.5, 1.0])  # bin edges and both ends
        labels = (torch.rand(64, generator=generator) < probs).long()
        ours.update(probs, labels)
        reference.update(probs, labels)
    assert abs(ours.compute().item() - reference.compute().item()) < 1e-6
    assert ours.compute().item() > 0


def test_train_split_keeps_fixed_size_states_and_its_auroc_is_close():
    generator = torch.Generator().manual_seed(1)
    train, val = make_metrics("bce", "train"), make_metrics("bce", "val")
    exact = BinaryAUROC()
    for _ in range(20):
        scores = torch.randn(16, generator=generator)
        target = (torch.rand(16, generator=generator) < torch.sigmoid(2 * scores)).float()
        update_metrics(train, "bce", scores, target)
        update_metrics(val, "bce", scores, target)
        exact.update(torch.sigmoid(scores), target.long())
    list_states = [
        name
        for metric in train.values()
        for name in metric._defaults
        if isinstance(getattr(metric, name), list)
    ]
    assert list_states == []
    assert abs(train["auroc"].compute().item() - exact.compute().item()) < 0.01
    assert val["auroc"].compute().item() == exact.compute().item()


def test_within_group_auroc_equals_the_rerank_suites():
    """Validation's within-problem AUROC (split across update calls, ties and one-label groups included) is the
    rerank suite's mean per-problem AUROC."""
    from autocritic.evaluation.metrics import Pool, within_problem_auroc

    generator = torch.Generator().manual_seed(2)
    groups = torch.randint(0, 12, (96,), generator=generator)
    scores = torch.randint(-4, 5, (96,), generator=generator).float()  # many ties
    target = (torch.rand(96, generator=generator) < 0.4).float()
    target[groups == 0] = 1.0  # a group with right answers only: left out
    val = make_metrics("bce", "val")
    for part in range(3):
        rows = slice(32 * part, 32 * (part + 1))
        update_metrics(val, "bce", scores[rows], target[rows], groups[rows])
    pools = [
        Pool(truth="", answers=[], correct=target[groups == g].bool().tolist(), scores=scores[groups == g].tolist())
        for g in groups.unique().tolist()
    ]
    expected, counted = within_problem_auroc(pools)
    assert 0 < counted < len(pools)
    assert val["within_auroc"].compute().item() == pytest.approx(expected, abs=1e-6)
    assert "within_auroc" not in make_metrics("bce", "train")
