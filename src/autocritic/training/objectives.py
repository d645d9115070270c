"""Critic objectives: pointwise BCE, scalar MSE, pairwise Bradley–Terry, and the optional joint LM loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autocritic.errors import ConfigError

KINDS = ("bce", "mse", "pairwise")
SCHEMA_OF = {"bce": "pointwise", "mse": "scalar", "pairwise": "pairwise"}
# Stepwise rows train as one pointwise row per step: the objectives that read one row's target (the 0/1 label).
STEPWISE_OBJECTIVES = ("bce", "mse")


@dataclass
class ObjectiveSettings:
    kind: str = "bce"
    margin: float = 0.0  # pairwise: required gap between chosen and rejected scores
    center_coef: float = 0.0  # pairwise: weight of mean((s_c + s_r)^2), keeps rewards centred (TRL uses 1e-2)
    lm_weight: float = 0.0  # λ of the joint LM loss on good / chosen responses (Cobbe et al.)
    replay_weight: float = 0.0  # weight of the LM loss on replay documents (data.replay_files), finetune only
    value_weight: float = 0.0  # token-level values (Cobbe et al.): BCE of every response token's value, bce only
    positive_weight: float = 1.0  # bce: weight of the right answers' term (>1 when wrong answers far outnumber them)
    calibrate: bool = True  # bce: fit the scores' scale and offset on the validation split (training/calibration.py)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"objective.kind={self.kind!r} is unknown: use one of {list(KINDS)}.")
        if self.value_weight and self.kind != "bce":
            raise ConfigError(
                f"objective.value_weight trains each response token's value on the row's 0/1 label: it needs "
                f"objective=bce, not {self.kind}. Set objective.value_weight=0."
            )
        if not self.positive_weight > 0:
            raise ConfigError(f"objective.positive_weight must be a positive number, got {self.positive_weight}.")


def pointwise_bce(scores: torch.Tensor, labels: torch.Tensor, positive_weight: float = 1.0) -> torch.Tensor:
    weight = None if positive_weight == 1.0 else torch.tensor(positive_weight, device=scores.device)
    return F.binary_cross_entropy_with_logits(scores, labels, pos_weight=weight)


def scalar_mse(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(scores, targets)


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0, center_coef: float = 0.0) -> torch.Tensor:
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the positions whose label is not -100 (response tokens of good rows)."""
    return next_token_loss(logits[:, :-1], labels[:, 1:])


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against labels (B, T) already aligned with them; -100 is ignored."""
    logits = logits.float()
    if not (labels != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def critic_loss(settings: ObjectiveSettings, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores: (B,) or, for pairwise, (2B,) with chosen rows first; with a last axis of head members (B, M) or
    (2B, M), the mean of the members' losses."""
    if scores.ndim > target.ndim and settings.kind != "pairwise":
        target = target[..., None].expand_as(scores)
    if settings.kind == "bce":
        return pointwise_bce(scores, target, settings.positive_weight)
    if settings.kind == "mse":
        return scalar_mse(scores, target)
    chosen, rejected = scores.chunk(2)
    return bradley_terry(chosen, rejected, settings.margin, settings.center_coef)


def token_value_loss(values: torch.Tensor, response: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every response token's value predicts the whole row's label (Cobbe et al.'s token-level verifier):
    values, response (B, T), labels (B,). The mean over all response tokens of the batch."""
    targets = labels[:, None].expand_as(values)
    return F.binary_cross_entropy_with_logits(values[response], targets[response])
