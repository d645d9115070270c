"""Per-split critic metrics (torchmetrics): AUROC, accuracy, ECE, Brier / MSE, pairwise accuracy."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError


class Brier(MeanSquaredError):
    """Mean squared error between the predicted probability and the 0/1 label."""


def make_metrics(kind: str) -> nn.Module:
    if kind == "bce":
        return MetricCollection(
            {"auroc": BinaryAUROC(), "accuracy": BinaryAccuracy(), "ece": BinaryCalibrationError(n_bins=10), "brier": Brier()}
        )
    if kind == "mse":
        return MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef()})
    return MetricCollection({"pairwise_accuracy": MeanMetric(), "auroc": BinaryAUROC()})


def update_metrics(metrics: MetricCollection, kind: str, scores: torch.Tensor, target: torch.Tensor) -> None:
    scores = scores.detach().float()
    if kind == "bce":
        probs, labels = torch.sigmoid(scores), (target >= 0.5).long()
        for name in ("auroc", "accuracy", "ece"):
            metrics[name].update(probs, labels)
        metrics["brier"].update(probs, labels.float())
    elif kind == "mse":
        metrics["mse"].update(scores, target)
        metrics["pearson"].update(scores, target)
    else:
        chosen, rejected = scores.chunk(2)
        metrics["pairwise_accuracy"].update((chosen > rejected).float())
        labels = torch.cat([torch.ones_like(chosen), torch.zeros_like(rejected)]).long()
        metrics["auroc"].update(torch.sigmoid(scores), labels)
