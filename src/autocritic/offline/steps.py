"""Exact step labels for worked solutions: which steps of a sampled solution are still on the way to the right answer.

A chain "58+27-19" is solved "58+27=85\\n85-19=66\\nAnswer: 66": one operation per step, then the answer step.
A countdown "Use 3 5 8 1 to make 19." is solved "8*3=24 (left 5 1 24; goal 19)\\n...\\nAnswer: 19": a step is right
when its operation is allowed on numbers still left, its result and the state it writes are right, and the target
can still be made from what is left (a dead end is a wrong step, however right its arithmetic).
Step i is good iff steps 0..i are all right (the process-reward convention): once a step is wrong the solution can
no longer reach the right answer honestly, so every later step is wrong too, even a right final number.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Sequence

from autocritic.formats import ANSWER_PREFIX, STEP_SEPARATOR
from autocritic.offline.tasks import (
    COUNTDOWN_OPS,
    Problem,
    countdown_left,
    countdown_numbers,
    countdown_result,
    countdown_step,
)

_OPERATION = re.compile(r"\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*")
_ANSWER = re.compile(rf"\s*{re.escape(ANSWER_PREFIX)}\s*(-?\d+)\s*")
_TERM = re.compile(r"([+-]?)(\d+)")
_COUNTDOWN_STEP = re.compile(r"\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)\s*\(left ((?:\d+ )*\d+); goal (\d+)\)\s*")


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


@functools.lru_cache(maxsize=65536)
def _reachable(numbers: tuple[int, ...], target: int) -> bool:
    if len(numbers) == 1:
        return numbers[0] == target
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i == j:
                continue
            for op in COUNTDOWN_OPS:
                result = countdown_result(numbers[i], op, numbers[j])
                if result is not None:
                    left = countdown_left(numbers, numbers[i], numbers[j], result)
                    if _reachable(tuple(sorted(left)), target):
                        return True
    return False


def countdown_reachable(numbers: Sequence[int], target: int) -> bool:
    """Can `target` be made using every number once, with +, * and differences above 0?"""
    return _reachable(tuple(sorted(numbers)), target)


def countdown_step_labels(problem: Problem, steps: list[str]) -> list[bool]:
    """One label per step: True while every step so far takes two numbers still left, computes its result right,
    writes the state it leaves (the numbers left in any order, the goal) and leaves the target reachable; then the
    answer line with the target. False from the first wrong, dead-end, missing-format or extra step on."""
    pool, target = countdown_numbers(problem)
    labels, good, answered = [], True, False
    for step in steps:
        if good and len(pool) > 1:
            match = _COUNTDOWN_STEP.fullmatch(step)
            good = False
            if match is not None:
                a, op, b, written, stated, goal = match.groups()
                a, b, written = int(a), int(b), int(written)
                result = countdown_result(a, op, b)
                if result == written and int(goal) == target and not Counter([a, b]) - Counter(pool):
                    pool = countdown_left(pool, a, b, result)
                    good = Counter(map(int, stated.split())) == Counter(pool) and countdown_reachable(pool, target)
        elif good and not answered:
            match = _ANSWER.fullmatch(step)
            good = answered = match is not None and int(match[1]) == target == pool[0]
        else:
            good = False
        labels.append(good)
    return labels


def countdown_state_after(step: str) -> list[int] | None:
    """The numbers a countdown step says are left, in its order; None for a line that is not a step."""
    match = _COUNTDOWN_STEP.fullmatch(step)
    return None if match is None else [int(n) for n in match[5].split()]


def countdown_next_steps(pool: Sequence[int], target: int, rng: random.Random) -> list[tuple[str, bool]]:
    """Every allowed next step from the numbers `pool` (a sum or product mostly in one order of its two numbers, the
    other order kept at random), each with its exact label: right iff the target stays reachable from what is left."""
    options = []
    for i, a in enumerate(pool):
        for j, b in enumerate(pool):
            if i == j:
                continue
            for op in COUNTDOWN_OPS:
                if op in "+*" and i > j and rng.random() < 0.5:
                    continue
                result = countdown_result(a, op, b)
                if result is None:
                    continue
                left = countdown_left(pool, a, b, result)
                options.append((countdown_step(a, op, b, left, target), countdown_reachable(left, target)))
    return list(dict.fromkeys(options))


def countdown_alternatives(
    problem: Problem, steps: Sequence[str], labels: Sequence[bool], per_state: int, rng: random.Random, seen: set
) -> list[tuple[list[str], str, bool]]:
    """Other next steps than the sampled ones, for the states a sampled solution reaches through right steps: up to
    `per_state` of each state's allowed steps (the sampled one left out), as (steps before, step, label). A state in
    `seen` (the same problem and steps before) is skipped, and added to it."""
    pool, target = countdown_numbers(problem)
    out = []
    for index in range(len(steps) + 1):
        if (index and not labels[index - 1]) or pool is None or len(pool) < 2:
            break
        key = (problem.question, tuple(steps[:index]))
        if key not in seen:
            seen.add(key)
            sampled = steps[index] if index < len(steps) else None
            options = [(step, good) for step, good in countdown_next_steps(pool, target, rng) if step != sampled]
            out += [(list(steps[:index]), step, good) for step, good in rng.sample(options, min(per_state, len(options)))]
        if index < len(steps):
            pool = countdown_state_after(steps[index])
    return out


def step_labels(problem: Problem, steps: list[str]) -> list[bool]:
    """The exact step labels of a problem of a step family (chain or countdown)."""
    if problem.family == "countdown":
        return countdown_step_labels(problem, steps)
    return chain_step_labels(problem, steps)


def solves(problem: Problem, steps: list[str]) -> bool:
    """Every step right and the last one the answer: what a countdown's right answer is (its target is given in
    the question, so the answer line alone proves nothing)."""
    labels = step_labels(problem, steps)
    return bool(labels) and all(labels) and _ANSWER.fullmatch(steps[-1]) is not None
