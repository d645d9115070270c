"""Which sampled answers the generator trains on: the filter scores each sample, the best of each problem stay.

    critic       the critic's probability that the answer is right (sigmoid of its score)
    likelihood   the generator's own per-token probability of the answer (exp of its mean token log-prob)
    none         no signal: the first `keep` distinct samples of each problem, a random draw (samples are
                 independent); keep=K trains on every distinct sample (plain self-distillation)
    oracle       the checker's label (the true answer): the upper bound, ReST-EM's filter

Every filter but `oracle` decides without the true answer; the selection never calls `judge` for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autocritic.errors import ConfigError

FILTERS = ("critic", "none", "likelihood", "oracle")


@dataclass(frozen=True)
class Candidate:
    """One sampled answer: its text, the critic's score (a logit) and its mean token log-probability."""

    text: str
    score: float | None = None
    mean_logprob: float | None = None


@dataclass(frozen=True)
class Kept:
    problem: int  # index into the round's problems
    text: str
    value: float  # the filter's value that kept it (1.0 for every sample under `none`)


def _probability(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def filter_value(name: str, candidate: Candidate) -> float:
    """The filter's value of a sample, a probability in [0, 1] (higher is better); not for `oracle`."""
    if name == "critic":
        if candidate.score is None:
            raise ConfigError("improve.filter=critic needs critic scores, but the sampler returned none.")
        return _probability(candidate.score)
    if name == "likelihood":
        if candidate.mean_logprob is None:
            raise ConfigError("improve.filter=likelihood needs log-probabilities, but the sampler returned none.")
        return math.exp(candidate.mean_logprob)
    raise ConfigError(f"improve.filter={name} gives no value to a sample.")


def select(
    pools: Sequence[Sequence[Candidate]],
    name: str,
    keep: int = 1,
    threshold: float | None = None,
    judge: Callable[[int, str], bool] | None = None,
) -> list[Kept]:
    """The answers to train on: per problem, the `keep` distinct best by the filter whose value reaches
    `threshold` (critic and likelihood; null: no bar). `none` keeps the first `keep` distinct samples; `oracle`
    keeps `keep` distinct right answers and is the only filter that calls `judge(problem index, text)`."""
    if name not in FILTERS:
        raise ConfigError(f"improve.filter={name!r} is not valid: expected one of {', '.join(FILTERS)}.")
    if name == "oracle" and judge is None:
        raise ConfigError("improve.filter=oracle needs the true answers of the improving problems (a judge).")
    kept: list[Kept] = []
    for index, pool in enumerate(pools):
        nonempty = [c for c in pool if c.text.strip()]
        if name == "none":
            ranked = [(1.0, c) for c in nonempty]
        elif name == "oracle":
            ranked = [(1.0, c) for c in nonempty if judge(index, c.text)]
        else:
            # Sorted by value; Python's sort is stable, so ties keep sampling order.
            ranked = sorted(((filter_value(name, c), c) for c in nonempty), key=lambda vc: -vc[0])
            if threshold is not None:
                ranked = [(v, c) for v, c in ranked if v >= threshold]
        seen: set[str] = set()
        for value, candidate in ranked:
            if len(seen) == keep:
                break
            if candidate.text not in seen:
                seen.add(candidate.text)
                kept.append(Kept(index, candidate.text, value))
    return kept
