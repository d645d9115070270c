"""Checkers: does a sampled response answer the problem right? `(question, answer, response) -> bool`, or None
for "cannot judge" (the sample is dropped).

    exact      the stripped response equals the stripped answer
    numeric    the last number in the response equals the answer's last number, within a tolerance
    mypkg.mod:check    your own function, imported by path
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from functools import partial

from autocritic.errors import ConfigError

Checker = Callable[[str, str, str], "bool | None"]
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
BUILT_IN = ("exact", "numeric")


def last_number(text: str) -> float | None:
    """The last number written in the text (thousands commas dropped), None when there is none."""
    found = NUMBER.findall(text)
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return value if math.isfinite(value) else None


def exact(question: str, answer: str, response: str) -> bool:
    return response.strip() == answer.strip()


def numeric(question: str, answer: str, response: str, tolerance: float = 1e-6) -> bool:
    """A response with no number is wrong (the verifier recipe); the tolerance is relative and absolute."""
    got, truth = last_number(response), last_number(answer)
    return got is not None and truth is not None and math.isclose(got, truth, rel_tol=tolerance, abs_tol=tolerance)


def imported(spec: str) -> Checker:
    """`package.module:function`, imported now: a wrong path is a ConfigError before any model loads."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(
            f"generate.checker={spec!r}: use exact, numeric, or a function as module:function "
            "(e.g. generate.checker=mypkg.checks:is_right)."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"generate.checker={spec!r}: module {module_name!r} cannot be imported ({error}). Install it or put its "
            "directory on PYTHONPATH."
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"generate.checker={spec!r}: {module_name} has no function {name!r}.")
    try:
        inspect.signature(function).bind("question", "answer", "response")
    except TypeError:
        raise ConfigError(
            f"generate.checker={spec!r}: {name} must take (question, answer, response) and return true or false."
        ) from None
    except ValueError:
        pass  # a builtin without a signature: called as it is
    return function


def load_checker(spec: str, tolerance: float = 1e-6) -> Checker:
    if spec == "exact":
        return exact
    if spec == "numeric":
        return partial(numeric, tolerance=tolerance)
    return imported(spec)
