"""Per-split critic metrics (torchmetrics): AUROC, accuracy, ECE, Brier, within-problem AUROC (validation and test)
/ MSE, pairwise accuracy.

The training split keeps fixed-size states only (binned AUROC, per-bin sums for ECE). A metric that appends each
step's scores leaves a small long-lived tensor between the step's large freed buffers, and the heap the allocator
cannot give back grows through the epoch (+~80 MiB over 400 LoRA steps on the tiny model, none without)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, Metric, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

TRAIN_AUROC_THRESHOLDS = 201  # binned AUROC, steps of 0.005 in probability


class Brier(MeanSquaredError):
    """Mean squared error between the predicted probability and the 0/1 label."""


class BinnedCalibrationError(Metric):
    """Expected calibration error (l1) of P(label = 1), from per-bin sums: the same value as torchmetrics'
    `BinaryCalibrationError(n_bins)`, in constant memory."""

    full_state_update = False

    def __init__(self, n_bins: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("boundaries", torch.linspace(0, 1, n_bins + 1), persistent=False)
        for name in ("count", "confidence", "positive"):
            self.add_state(name, default=torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        probs = probs.detach().reshape(-1)
        index = torch.bucketize(probs.float(), self.boundaries, right=True) - 1
        self.count.scatter_add_(0, index, torch.ones_like(self.count[index]))
        self.confidence.scatter_add_(0, index, probs.to(self.confidence.dtype))
        self.positive.scatter_add_(0, index, labels.reshape(-1).to(self.positive.dtype))

    def compute(self) -> torch.Tensor:
        count = self.count.clamp(min=1)
        gap = (self.positive / count - self.confidence / count).abs()
        return (gap * self.count / self.count.sum()).sum().float()


class WithinGroupAUROC(Metric):
    """Mean AUROC over the groups (the answers to one prompt) that hold both labels: how well the scores rank the
    answers to one question, what best-of-N relies on. Validation and test only (it keeps every score); rows of
    group -1 (unknown) are left out."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("scores", "labels", "groups"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
        self.scores.append(scores.detach().reshape(-1).float())
        self.labels.append(labels.reshape(-1).bool())
        self.groups.append(groups.reshape(-1).long())

    def compute(self) -> torch.Tensor:
        values = []
        # A list of tensors per update, or one tensor once synced across ranks; a loop over groups is cheaper on
        # the CPU than kernel by kernel on a GPU.
        states = [torch.cat(x) if isinstance(x, list) else x for x in (self.scores, self.labels, self.groups) if len(x)]
        if len(states) == 3:
            scores, labels, groups = (x.cpu() for x in states)
            for group in groups[groups >= 0].unique():
                member = groups == group
                if labels[member].any() and not labels[member].all():  # as the rerank suite's `auroc`
                    values.append(binary_auroc(scores[member].double(), labels[member].long()).float())
        return torch.stack(values).mean() if values else torch.tensor(float("nan"))


def make_metrics(kind: str, split: str = "val") -> nn.Module:
    auroc = BinaryAUROC(thresholds=TRAIN_AUROC_THRESHOLDS) if split == "train" else BinaryAUROC()
    if kind == "bce":
        metrics = {
            "auroc": auroc,
            "accuracy": BinaryAccuracy(),
            "ece": BinnedCalibrationError(n_bins=10),
            "brier": Brier(),
        }
        if split != "train":
            metrics["within_auroc"] = WithinGroupAUROC()
        return MetricCollection(metrics)
    if kind == "mse":
        return MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef()})
    return MetricCollection({"pairwise_accuracy": MeanMetric(), "auroc": auroc})


def update_metrics(
    metrics: MetricCollection, kind: str, scores: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None
) -> None:
    scores = scores.detach().float()
    if kind == "bce":
        probs, labels = torch.sigmoid(scores), (target >= 0.5).long()
        for name in ("auroc", "accuracy", "ece"):
            metrics[name].update(probs, labels)
        metrics["brier"].update(probs, labels.float())
        if "within_auroc" in metrics:
            metrics["within_auroc"].update(scores, labels, groups if groups is not None else torch.full_like(labels, -1))
    elif kind == "mse":
        metrics["mse"].update(scores, target)
        metrics["pearson"].update(scores, target)
    else:
        chosen, rejected = scores.chunk(2)
        metrics["pairwise_accuracy"].update((chosen > rejected).float())
        labels = torch.cat([torch.ones_like(chosen), torch.zeros_like(rejected)]).long()
        metrics["auroc"].update(torch.sigmoid(scores), labels)
