"""Step labels without a step checker: Math-Shepherd's completion estimate (Wang et al. 2024).

A step is good when the solution can still reach the right answer from it. From the prefix ending with step i,
K continuations are sampled and each whole text (prefix + continuation) is checked:

    hard estimation   label_i = at least one of the K reaches the right answer      (the default)
    soft estimation   label_i = the fraction of the K that do

The final step needs no continuation: its label is the checker on the whole solution. A prefix is the prompt's
text followed by each step and the separator (`data.stepwise.step_prefix`): the text the stepwise schema trains on.
Nothing here loads a model: `complete` is any function from prompts to K continuations each, called once for all
the prefixes of all the solutions of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autocritic.data.stepwise import DEFAULT_SEPARATOR, step_prefix
from autocritic.labelling.checkers import Checker

Completer = Callable[[list[str]], list[list[str]]]  # prompts -> K continuations each


@dataclass(frozen=True)
class Solution:
    """A sampled solution to label: `prompt` is the question as the checker reads it; `context` the text the
    continuations follow (the rendered prompt; the question itself when None)."""

    prompt: str
    steps: tuple[str, ...]
    answer: str
    context: str | None = None


def split_steps(response: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """The steps of a response: its pieces between separators, blank pieces dropped."""
    return [piece for piece in response.split(separator) if piece.strip()]


def shepherd_labels_batch(
    solutions: Sequence[Solution],
    complete: Completer,
    checker: Checker,
    k: int,
    separator: str = DEFAULT_SEPARATOR,
    soft: bool = False,
) -> list[list[float] | list[bool]]:
    """The labels of every step of every solution, with one call of `complete` for all prefixes but the last of
    each solution. A continuation the checker cannot judge (None) does not reach the answer."""
    for number, solution in enumerate(solutions, start=1):
        if not solution.steps:
            raise ValueError(f"solution {number} has no steps.")
        if any(separator in step for step in solution.steps):
            raise ValueError(f"solution {number}: a step contains the separator {separator!r}; split it first.")
    queries = [(s, i) for s, solution in enumerate(solutions) for i in range(1, len(solution.steps))]
    prompts = [context_of(solutions[s]) + step_prefix(solutions[s].steps, i, separator) for s, i in queries]
    continuations = complete(prompts) if prompts else []
    if len(continuations) != len(prompts) or any(len(c) != k for c in continuations):
        raise ValueError(f"complete() must return {k} continuations for each of its {len(prompts)} prompts.")
    fractions = [[0.0] * len(solution.steps) for solution in solutions]
    for (s, i), texts in zip(queries, continuations, strict=True):
        solution, prefix = solutions[s], step_prefix(solutions[s].steps, i, separator)
        right = sum(bool(checker(solution.prompt, solution.answer, prefix + text)) for text in texts)
        fractions[s][i - 1] = right / k
    for s, solution in enumerate(solutions):
        whole = step_prefix(solution.steps, len(solution.steps), separator)
        fractions[s][-1] = float(bool(checker(solution.prompt, solution.answer, whole)))
    return fractions if soft else [[f > 0 for f in labels] for labels in fractions]


def shepherd_labels(
    prompt: str,
    steps: Sequence[str],
    answer: str,
    complete: Completer,
    checker: Checker,
    k: int,
    separator: str = DEFAULT_SEPARATOR,
    soft: bool = False,
) -> list[float] | list[bool]:
    """The labels of one solution's steps; `complete` continues `prompt` + a step prefix."""
    return shepherd_labels_batch([Solution(prompt, tuple(steps), answer)], complete, checker, k, separator, soft)[0]


def context_of(solution: Solution) -> str:
    return solution.prompt if solution.context is None else solution.context


def stepwise_rows(
    solutions: Sequence[Solution], complete: Completer, checker: Checker, k: int, separator: str = DEFAULT_SEPARATOR
) -> tuple[list[dict], dict[str, int]]:
    """Stepwise rows {"prompt", "completions", "labels", "soft_labels"} (hard labels, and the soft estimate beside
    them) and their counts."""
    fractions = shepherd_labels_batch(solutions, complete, checker, k, separator, soft=True)
    rows = [
        {"prompt": s.prompt, "completions": list(s.steps), "labels": [f > 0 for f in f_s], "soft_labels": f_s}
        for s, f_s in zip(solutions, fractions, strict=True)
    ]
    steps = [f for f_s in fractions for f in f_s]
    counts = {"solutions": len(rows), "steps": len(steps), "good_steps": sum(f > 0 for f in steps)}
    return rows, counts | {"bad_steps": counts["steps"] - counts["good_steps"]}


def bad_step_agreement(
    estimated: Sequence[bool | float] | Sequence[Sequence[bool | float]],
    exact: Sequence[bool | float] | Sequence[Sequence[bool | float]],
    threshold: float = 0.5,
) -> dict[str, float | int | None]:
    """How well `estimated` step labels find the bad steps of `exact` ones: a step is bad when its label is below
    `threshold` (False, 0, a soft estimate under it). Flat lists of labels, or one list per solution; with lists per
    solution, also how often both put the first bad step at the same place (or agree there is none).

    precision: of the steps flagged bad, the share that are bad; recall: of the bad steps, the share flagged (None
    when there is nothing to divide by)."""
    nested = bool(estimated) and isinstance(estimated[0], Sequence)
    solutions = list(zip(estimated, exact, strict=True)) if nested else [(estimated, exact)]
    flagged = bad = caught = agree = steps = 0
    first_same = 0
    for guess, truth in solutions:
        if len(guess) != len(truth):
            raise ValueError(f"label lists of different lengths: {len(guess)} and {len(truth)}.")
        guess_bad, truth_bad = [v < threshold for v in guess], [v < threshold for v in truth]
        steps += len(truth)
        flagged += sum(guess_bad)
        bad += sum(truth_bad)
        caught += sum(g and t for g, t in zip(guess_bad, truth_bad, strict=True))
        agree += sum(g == t for g, t in zip(guess_bad, truth_bad, strict=True))
        first_same += first_bad(guess_bad) == first_bad(truth_bad)
    precision = caught / flagged if flagged else None
    recall = caught / bad if bad else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    out = {"steps": steps, "bad": bad, "flagged": flagged, "caught": caught, "precision": precision, "recall": recall,
           "f1": f1, "accuracy": agree / steps if steps else None}
    if nested:
        out["first_bad_step_agreement"] = first_same / len(solutions)
    return out


def first_bad(bad: Sequence[bool]) -> int | None:
    return next((i for i, b in enumerate(bad) if b), None)
