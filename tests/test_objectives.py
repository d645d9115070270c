"""Objectives on hand-computed numbers: BCE, MSE, Bradley–Terry (margin, centering), the joint LM loss."""

from __future__ import annotations

import math

import pytest
import torch

from autocritic.errors import ConfigError
from autocritic.training.metrics import make_metrics, update_metrics
from autocritic.training.objectives import (
    ObjectiveSettings,
    bradley_terry,
    critic_loss,
    lm_loss,
    pointwise_bce,
    scalar_mse,
    token_value_loss,
)


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_pointwise_bce_by_hand():
    scores, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    # -log σ(0), -log(1 - σ(2)), -log σ(-1)
    expected = (math.log(2) + softplus(2.0) + softplus(1.0)) / 3
    assert pointwise_bce(scores, labels).item() == pytest.approx(expected, abs=1e-6)
    assert critic_loss(ObjectiveSettings("bce"), scores, labels).item() == pytest.approx(expected, abs=1e-6)


def test_positive_weight_scales_the_right_answers_term_by_hand():
    scores, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = (3 * math.log(2) + softplus(2.0) + 3 * softplus(1.0)) / 3
    settings = ObjectiveSettings("bce", positive_weight=3.0)
    assert critic_loss(settings, scores, labels).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ConfigError, match="positive_weight"):
        ObjectiveSettings("bce", positive_weight=0.0)


def test_pointwise_bce_accepts_soft_labels():
    # label 0.5 on score 0: -(0.5 log σ(0) + 0.5 log σ(0)) = log 2
    assert pointwise_bce(torch.tensor([0.0]), torch.tensor([0.5])).item() == pytest.approx(
        math.log(2), abs=1e-6
    )


def test_scalar_mse_by_hand():
    scores, targets = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0])
    assert scalar_mse(scores, targets).item() == pytest.approx((0 + 4 + 9) / 3)
    assert critic_loss(ObjectiveSettings("mse"), scores, targets).item() == pytest.approx(13 / 3)


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # -log σ(2), -log σ(-1)
    plain = (softplus(-2.0) + softplus(1.0)) / 2
    assert bradley_terry(chosen, rejected).item() == pytest.approx(plain, abs=1e-6)


def test_bradley_terry_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # margin 1: -log σ(2 - 0 - 1), -log σ(0 - 1 - 1)
    with_margin = (softplus(-1.0) + softplus(2.0)) / 2
    assert bradley_terry(chosen, rejected, margin=1.0).item() == pytest.approx(with_margin, abs=1e-6)
    # centering: + 0.1 * mean((2 + 0)^2, (0 + 1)^2) = 0.1 * 2.5
    centred = (softplus(-2.0) + softplus(1.0)) / 2 + 0.25
    assert bradley_terry(chosen, rejected, center_coef=0.1).item() == pytest.approx(centred, abs=1e-6)


def test_pairwise_critic_loss_reads_chosen_rows_first():
    scores = torch.tensor([3.0, -1.0, 0.0, 0.0])  # chosen (3, -1), rejected (0, 0)
    settings = ObjectiveSettings("pairwise", margin=0.5, center_coef=0.01)
    expected = bradley_terry(scores[:2], scores[2:], 0.5, 0.01)
    assert critic_loss(settings, scores, torch.ones(2)).item() == pytest.approx(expected.item())
    swapped = critic_loss(settings, scores.flip(0), torch.ones(2))
    assert swapped.item() != pytest.approx(expected.item())


def test_lm_loss_ignores_minus_100():
    torch.manual_seed(0)
    vocab = 7
    logits = torch.randn(1, 5, vocab, requires_grad=True)
    labels = torch.tensor([[-100, 3, -100, 1, -100]])
    # position t predicts label t+1: logits[0] -> 3, logits[2] -> 1
    log_probs = torch.log_softmax(logits[0].detach(), -1)
    expected = -(log_probs[0, 3] + log_probs[2, 1]) / 2
    loss = lm_loss(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    # Positions whose next label is -100 (1, 3) and the last position get no gradient.
    assert logits.grad[0, [1, 3, 4]].abs().sum() == 0
    assert logits.grad[0, [0, 2]].abs().sum() > 0


def test_lm_loss_unchanged_by_logits_at_ignored_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 2, 2, -100], [-100, -100, -100, -100]])
    noisy = logits.clone()
    noisy[0, 2:] = 10 * torch.randn(2, 5)
    noisy[1] = 10 * torch.randn(4, 5)
    assert lm_loss(noisy, labels).item() == pytest.approx(lm_loss(logits, labels).item(), abs=1e-6)


def test_lm_loss_without_targets_is_zero_and_differentiable():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    loss = lm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()  # no NaN from an empty mean
    assert torch.isfinite(logits.grad).all()


def test_unknown_objective_is_a_config_error():
    with pytest.raises(ConfigError, match="objective.kind='hinge'"):
        ObjectiveSettings("hinge")


def test_pairwise_metrics_by_hand():
    metrics = make_metrics("pairwise")
    update_metrics(metrics, "pairwise", torch.tensor([2.0, 0.0, 1.0, 0.0, 1.0, -1.0]), torch.ones(3))
    # chosen (2, 0, 1) vs rejected (0, 1, -1): 2 of 3 right
    assert metrics["pairwise_accuracy"].compute().item() == pytest.approx(2 / 3)


def test_token_values_learn_the_row_label_on_response_tokens_only():
    values = torch.tensor([[9.0, 0.0, 2.0], [-9.0, 1.0, 0.0]])
    response = torch.tensor([[False, True, True], [False, False, True]])
    labels = torch.tensor([1.0, 0.0])
    by_hand = (-math.log(torch.sigmoid(torch.tensor(0.0))) - math.log(torch.sigmoid(torch.tensor(2.0)))
               - math.log(1 - torch.sigmoid(torch.tensor(0.0)))) / 3
    assert token_value_loss(values, response, labels).item() == pytest.approx(by_hand, rel=1e-6)


def test_token_values_need_a_pointwise_objective():
    with pytest.raises(ConfigError, match="needs objective=bce"):
        ObjectiveSettings(kind="pairwise", value_weight=1.0)


@pytest.mark.parametrize("kind", ["bce", "mse", "pairwise"])
def test_a_loss_over_head_members_is_the_mean_of_each_members_loss(kind):
    settings = ObjectiveSettings(kind=kind, positive_weight=3.0 if kind == "bce" else 1.0)
    members = torch.randn(8, 3, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]) if kind == "pairwise" else torch.rand(8).round()
    by_hand = torch.stack([critic_loss(settings, members[:, m], target) for m in range(3)]).mean()
    assert critic_loss(settings, members, target).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # each member's gradient comes from its own score alone (not from the members' mean)
    critic_loss(settings, members, target).backward()
    alone = members.detach()[:, 0].clone().requires_grad_(True)
    (critic_loss(settings, alone, target) / 3).backward()
    assert torch.allclose(members.grad[:, 0], alone.grad)
