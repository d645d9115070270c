"""Calibrated probabilities for pointwise critics: after training, a scale and an offset of the score are fitted on
the validation split (Platt scaling) and folded into the head's last linear layer, so sigmoid(score) is a calibrated
probability of "right" wherever a score is read, with no new code path. Rankings are unchanged (the scale is
positive), so best-of-N and AUROC are too.

Why: a positive weight above 1 (`objective.positive_weight`, the offline checker's) or hard negatives that the
scored answers rarely contain shift the scores' base rate, and the probabilities then overstate "right".
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from autocritic.model.backbone import unwrap

log = logging.getLogger("autocritic")


def fit_platt(scores: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> tuple[float, float]:
    """The (scale, offset) minimising the log loss of sigmoid(scale * score + offset); scale kept positive."""
    with torch.inference_mode(False), torch.enable_grad():  # called from test hooks, where gradients are off
        return _fit(scores.detach().clone().double(), labels.detach().clone().double(), steps)


def _fit(scores: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, float]:
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    offset = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale, offset], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(log_scale.exp() * scores + offset, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_scale.detach().exp()), float(offset.detach())


def last_linears(head: nn.Module) -> list[nn.Linear]:
    """The output layer of each member of a head (a plain head is one member)."""
    members = head.members if getattr(head, "members", None) is not None else [head]
    return [[m for m in member.net.modules() if isinstance(m, nn.Linear)][-1] for member in members]


@torch.no_grad()
def fold_into_head(head: nn.Module, scale: float, offset: float) -> None:
    """score -> scale * score + offset. The score is the mean of the members' logits, so each member takes both."""
    for linear in last_linears(head):
        linear.weight.mul_(scale)
        linear.bias.mul_(scale).add_(offset)


class Calibration(L.Callback):
    """Fits and folds the calibration when testing starts, once the weights kept for the export are loaded."""

    def __init__(self) -> None:
        self.fitted: tuple[float, float] | None = None

    @torch.no_grad()
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "FSDP" in type(trainer.strategy).__name__:  # the head's weights are sharded flat parameters there
            log.warning("calibration skipped under FSDP: the scores are the head's raw logits")
            return
        was_training = pl_module.training
        pl_module.eval()
        scores, labels = [], []
        for index, batch in enumerate(trainer.datamodule.val_dataloader()):
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, index)
            scores.append(pl_module.score_batch(batch).float().cpu())
            labels.append((batch["target"] >= 0.5).float().cpu())
        pl_module.train(was_training)
        scores, labels = torch.cat(scores), torch.cat(labels)
        if trainer.world_size > 1:  # each rank scored its share of the validation rows
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (scores, labels))
            scores, labels = torch.cat([s for s, _ in shares]), torch.cat([y for _, y in shares])
        if labels.min() == labels.max():
            log.warning("calibration skipped: the validation rows are all %s", "right" if labels[0] else "wrong")
            return
        self.fitted = fit_platt(scores, labels)
        fold_into_head(unwrap(pl_module.critic).head, *self.fitted)
        scale, offset = self.fitted
        log.info("calibration on %d validation rows: score -> %.4f * score %s %.4f", len(scores), scale,
                 "-" if offset < 0 else "+", abs(offset))
