"""A model that did not learn is not exported as one: a training loss that grew by orders of magnitude, or scores
that collapsed to one value, end the run with exit status 3 and no export (unless `export_diverged=true`).

Non-finite losses stop training at once (`CriticModule`); these are the failures that stay finite, such as a
learning rate far too high for the head: the loss climbs to 1e12 and every score saturates to one value.
"""

from __future__ import annotations

import lightning as L
import torch

GROWTH = 100.0  # the last epoch's mean training loss against the first step's


class LossWatch(L.Callback):
    """The first training step's loss and each epoch's mean, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None
        self.epoch_means: list[float] = []
        self._sum: torch.Tensor | None = None
        self._count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        if self.first is None:
            self.first = loss.clone()
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._count:
            self.epoch_means.append(float(self._sum / self._count))
        self._sum, self._count = None, 0


def divergence(watch: LossWatch, metrics: dict[str, float]) -> str | None:
    """Why this run did not learn, or None."""
    if watch.first is not None and watch.epoch_means:
        first, last = float(watch.first), watch.epoch_means[-1]
        if last > GROWTH * max(first, 1e-3):
            return f"the training loss grew from {first:.3g} (first step) to {last:.3g} (last epoch's mean)"
    # AUROC 0.5 alone is no proof: on a small test split half the pairs can be ordered right by chance.
    spread, auroc = metrics.get("test/score_spread"), metrics.get("test/auroc")
    if spread is not None and spread <= 1e-6 * max(1.0, abs(metrics.get("test/score_mean", 0.0))):
        if auroc is None or abs(auroc - 0.5) < 1e-6:
            return "every test row gets the same score (the head collapsed)"
    return None
