"""Figures the suites share: rates, the critic's AUROC / ROC / calibration, and best-of-N curves.

A best-of-N curve subsamples N of the max-N samples of each problem (the same random subsets for every method,
so the methods are compared on paired draws), scores each method per problem averaged over the subsets, then
averages over problems; `ci95` is 1.96 standard errors over problems.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error, binary_roc

from autocritic.formats import format_number
from autocritic.inference.rerank import majority_vote
from autocritic.offline.labelling import is_correct

METHODS = ("single", "majority", "likelihood", "weighted_vote", "best_of_n", "pass_at_n")
METHOD_LABELS = {
    "greedy": "greedy",
    "single": "single sample",
    "majority": "majority vote",
    "likelihood": "best-of-N (likelihood)",
    "weighted_vote": "critic-weighted vote",
    "best_of_n": "best-of-N (critic)",
    "pass_at_n": "pass@N (oracle)",
}


def rate(flags: Sequence[bool]) -> float | None:
    return sum(map(bool, flags)) / len(flags) if len(flags) else None


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Through torchmetrics, as training computes it; None when only one class is present."""
    if len(set(map(bool, labels))) < 2:
        return None
    return float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels).long()))


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]] | None:
    if len(set(map(bool, labels))) < 2:
        return None
    fpr, tpr, _ = binary_roc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels).long())
    return fpr.tolist(), tpr.tolist()


def calibration(scores: Sequence[float], labels: Sequence[bool], bins: int = 10) -> dict:
    """ECE of sigmoid(score) (torchmetrics, as in training) and the reliability bins of the diagram."""
    if not len(scores):
        return {"ece": None, "bins": []}
    probs = np.array([sigmoid(s) for s in scores])
    truth = np.array(labels, dtype=float)
    ece = float(binary_calibration_error(torch.tensor(probs), torch.tensor(truth).long(), n_bins=bins))
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(probs[members].mean()) if count else None,
                "accuracy": float(truth[members].mean()) if count else None,
            }
        )
    # Equal-count bins as well: a critic trained on rare positives puts every probability in the first uniform bin.
    order = np.argsort(probs, kind="stable")
    quantile_rows = [
        {
            "count": len(chunk),
            "confidence": float(probs[chunk].mean()),
            "accuracy": float(truth[chunk].mean()),
        }
        for chunk in np.array_split(order, min(bins, len(order)))
    ]
    return {
        "ece": ece,
        "bins": rows,
        "quantile_bins": quantile_rows,
        "mean_confidence": float(probs.mean()),
        "positive_rate": float(truth.mean()),
    }


def canonical(answer: str | None) -> str | None:
    """Votes count "68", "68.0" and "068" as one answer."""
    if answer is None:
        return None
    try:
        value = float(answer)
    except ValueError:
        return answer.strip().casefold()
    return format_number(value) if math.isfinite(value) else answer


@dataclass
class Pool:
    """The sampled answers of one problem: extracted answer, right or wrong, critic score of each sample, and
    the model's own mean token log-probability of it (the baseline a critic must beat), when known."""

    truth: str
    answers: list[str | None]
    correct: list[bool]
    scores: list[float]
    likelihoods: list[float] | None = None


def _best(values: Sequence[float], subset: Sequence[int]) -> int:
    return subset[max(range(len(subset)), key=lambda k: values[subset[k]])]  # the first on ties


def _methods_on(pool: Pool, subset: Sequence[int]) -> dict[str, float]:
    answers = [canonical(pool.answers[i]) for i in subset]
    scores = [pool.scores[i] for i in subset]
    outcome = {
        "single": sum(pool.correct[i] for i in subset) / len(subset),  # one random sample of the subset
        "majority": is_correct(majority_vote(answers), pool.truth),
        "weighted_vote": is_correct(majority_vote(answers, [sigmoid(s) for s in scores]), pool.truth),
        "best_of_n": pool.correct[_best(pool.scores, subset)],
        "pass_at_n": any(pool.correct[i] for i in subset),
    }
    if pool.likelihoods is not None:
        outcome["likelihood"] = pool.correct[_best(pool.likelihoods, subset)]
    return outcome


def ci95(values: Sequence[float]) -> float | None:
    """Half-width of the 95% interval of the mean: 1.96 standard errors (None below two values)."""
    if len(values) < 2:
        return None
    return 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def with_ci(value: float | None, half_width: float | None) -> str:
    """A rate for a table: "0.913 ± 0.045", without the interval when there is none, "—" without a value."""
    if value is None:
        return "—"
    return f"{value:.3f}" + ("" if half_width is None else f" ± {half_width:.3f}")


def best_of_n_curve(pools: Sequence[Pool], ns: Sequence[int], subsets: int, seed: int) -> dict:
    """{method: {N: {"accuracy", "ci95"}}} over the problems; each N averages `subsets` random subsets."""
    rng = random.Random(f"{seed}|best-of-n")
    methods = [m for m in METHODS if m != "likelihood" or all(p.likelihoods is not None for p in pools)]
    curve: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for n in ns:
        per_problem = {m: [] for m in methods}
        for pool in pools:
            size = len(pool.scores)
            if n > size:
                raise ValueError(f"N={n} is larger than the {size} samples of a problem")
            draws = [rng.sample(range(size), n) for _ in range(subsets)]
            outcomes = [_methods_on(pool, draw) for draw in draws]
            for m in methods:
                per_problem[m].append(sum(o[m] for o in outcomes) / len(outcomes))
        for m in methods:
            values = per_problem[m]
            curve[m][n] = {"accuracy": float(np.mean(values)) if values else None, "ci95": ci95(values)}
    return curve


def gap_closed(greedy: float | None, chosen: float | None, oracle: float | None) -> float | None:
    """(chosen − greedy) / (oracle − greedy): 1 when reranking reaches pass@N, 0 when it adds nothing."""
    if greedy is None or chosen is None or oracle is None or oracle - greedy <= 0:
        return None
    return (chosen - greedy) / (oracle - greedy)


def within_problem_auroc(pools: Sequence[Pool], of: str = "scores") -> tuple[float | None, int]:
    """Mean AUROC over the problems that have both right and wrong samples: what reranking relies on.
    `of`: "scores" (the critic) or "likelihoods" (the model's own mean token log-probability)."""
    values = [auroc(getattr(p, of), p.correct) for p in pools]
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), len(values)
