"""Exact step labels for worked chains: which steps of a sampled solution are still on the way to the right answer.

A chain "58+27-19" is solved "58+27=85\\n85-19=66\\nAnswer: 66": one operation per step, then the answer step.
Step i is good iff steps 0..i are all right (the process-reward convention): once a step is wrong the solution can
no longer reach the right answer honestly, so every later step is wrong too, even a right final number.
"""

from __future__ import annotations

import re

from autocritic.formats import ANSWER_PREFIX, STEP_SEPARATOR
from autocritic.offline.tasks import Problem

_OPERATION = re.compile(r"\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*")
_ANSWER = re.compile(rf"\s*{re.escape(ANSWER_PREFIX)}\s*(-?\d+)\s*")
_TERM = re.compile(r"([+-]?)(\d+)")


def split_steps(text: str) -> list[str]:
    """The steps of a solution: its lines, without a trailing empty one."""
    steps = text.split(STEP_SEPARATOR)
    return steps[:-1] if steps and steps[-1] == "" else steps


def chain_operations(problem: Problem) -> list[tuple[str, int]]:
    """The chain's (operator, operand) after its first operand, e.g. "58+27-19" -> [("+", 27), ("-", 19)]."""
    if problem.family != "chain" or problem.expression is None:
        raise ValueError(f"{problem.key!r} is not a chain problem (family {problem.family!r})")
    terms = _TERM.findall(problem.expression)
    return [(op, int(number)) for op, number in terms[1:]]


def chain_step_labels(problem: Problem, steps: list[str]) -> list[bool]:
    """One label per step: True while every step so far is the right operation on the right running value with the
    right result, then the right answer; False from the first wrong, missing-format or extra step on."""
    expected = chain_operations(problem)
    value = int(_TERM.findall(problem.expression or "")[0][1])
    labels, good = [], True
    for index, step in enumerate(steps):
        if good and index < len(expected):
            op, operand = expected[index]
            match = _OPERATION.fullmatch(step)
            result = value + operand if op == "+" else value - operand
            good = match is not None and (int(match[1]), match[2], int(match[3]), int(match[4])) == (
                value,
                op,
                operand,
                result,
            )
            value = result
        elif good and index == len(expected):
            match = _ANSWER.fullmatch(step)
            good = match is not None and int(match[1]) == value == int(problem.answer)
        else:
            good = False
        labels.append(good)
    return labels
