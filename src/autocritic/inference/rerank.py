"""Best-of-N reranking with the critic, and majority voting over extracted answers (self-consistency).

prompt ──► N samples (one batched generate, scores from the same passes) ──► argmax critic score
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from autocritic.inference.generation import GenerationSettings, Sample, TextGenerator


@dataclass
class Reranked:
    prompt: str
    samples: list[Sample]
    chosen: int  # index of the highest critic score (the first one on ties)

    @property
    def scores(self) -> list[float]:
        return [s.score for s in self.samples]

    @property
    def best(self) -> Sample:
        return self.samples[self.chosen]


def best_of_n(
    generator: TextGenerator,
    prompts: Sequence[str],
    n: int,
    settings: GenerationSettings | None = None,
    **overrides,
) -> list[Reranked]:
    """`n` samples per prompt, the one with the highest critic score chosen. Sampling is on unless `settings`
    or `overrides` say otherwise (greedy with n > 1 would give n copies of one answer, so it is refused)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    settings = replace(settings or GenerationSettings(do_sample=True), n=n, **overrides)
    if n > 1 and not settings.do_sample:
        raise ValueError(
            "best-of-n with n > 1 needs do_sample=True: greedy decoding gives n identical samples"
        )
    results = []
    for prompt, samples in zip(prompts, generator.generate(prompts, settings), strict=True):
        scores = [s.score for s in samples]
        if any(score is None for score in scores):
            raise ValueError("the generator returned samples without critic scores")
        results.append(Reranked(prompt, samples, max(range(len(scores)), key=scores.__getitem__)))
    return results


def majority_vote(
    answers: Sequence[Hashable | None], weights: Sequence[float] | None = None
) -> Hashable | None:
    """The most frequent answer (None entries, i.e. unparseable samples, do not vote), or the one with the largest
    total weight when `weights` are given (e.g. sigmoid of critic scores). Ties go to the answer seen first.
    None when no answer voted."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[Hashable, float] = {}
    for index, answer in enumerate(answers):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + (1.0 if weights is None else weights[index])
    if not totals:
        return None
    return max(
        totals, key=totals.__getitem__
    )  # max keeps the first of equal keys: dicts keep insertion order
