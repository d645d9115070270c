"""Label a sampled answer right or wrong by its final number (the Cobbe et al. 2021 verifier recipe).

A label function is any `label_fn(problem, response) -> bool | None`; None means "cannot judge" and drops
the sample. Other formats plug in a different extractor, e.g. GSM8K's "#### 42":

    label_fn = make_label_fn(lambda text: text.split("####")[-1] if "####" in text else None)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from autocritic.offline.steps import solves, split_steps
from autocritic.offline.tasks import Problem

LabelFn = Callable[[Problem, str], "bool | None"]

_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
# Markers after which the answer stands; the last one present wins.
ANSWER_MARKERS = ("####", "Final Answer:", "Answer:", "answer is")


def extract_answer(text: str) -> str | None:
    """The number the text commits to: the last number after the last answer marker (or in the whole text),
    commas dropped. None when there is no number."""
    tail = text
    for marker in ANSWER_MARKERS:
        if marker in tail:
            tail = tail.rsplit(marker, 1)[1]
    numbers = _NUMBER.findall(tail)
    return numbers[-1].replace(",", "") if numbers else None


def _as_number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_correct(pred: str | None, truth: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Numbers compare with a tolerance ("68.0" == "68"); anything else compares as trimmed, case-folded text."""
    if pred is None:
        return False
    p, t = _as_number(pred), _as_number(truth)
    if p is not None and t is not None:
        return math.isclose(p, t, rel_tol=rel_tol, abs_tol=abs_tol)
    return pred.strip().casefold() == truth.strip().casefold()


def make_label_fn(extract: Callable[[str], str | None] = extract_answer) -> LabelFn:
    """An unparsable answer is a wrong answer (label False), as in the verifier recipe."""

    def label(problem: Problem, response: str) -> bool:
        return is_correct(extract(response), problem.answer)

    label.__qualname__ = f"label_by[{getattr(extract, '__qualname__', repr(extract))}]"
    return label


label_final_number: LabelFn = make_label_fn()

def answer_of(problem: Problem, text: str) -> str | None:
    """The answer a response commits to, in the form that equal answers share (majority vote groups by it)."""
    return extract_answer(text)


def is_right(problem: Problem, text: str) -> bool:
    """Is this response right for the offline world's problem? Numbers compare by value; a countdown's answer (its
    target, given in the question) counts only after right steps."""
    if problem.family == "countdown":
        return solves(problem, split_steps(text))
    return is_correct(answer_of(problem, text), problem.answer)


label_offline: LabelFn = is_right
