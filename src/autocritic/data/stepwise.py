"""Stepwise supervision (TRL's process reward rows): a prompt, its solution as a list of steps, one label per step.

    {"prompt": "...", "completions": ["step 1", "step 2", ...], "labels": [true, false, ...]}

A step critic is the critic read at the end of each step. Training expands each row into one pointwise row per
step prefix, with sep = data.step_separator (TRL's default "\\n"):

    response_i = step_1 + sep + ... + step_i + sep        label_i = labels[i]

so the critic learns to read the state at the separator that ends a step: what a search reads after generating a
step up to its newline. A step that contains the separator would read as two steps, and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autocritic.errors import DataError

FIELDS = ("prompt", "completions", "labels")
DEFAULT_SEPARATOR = "\n"


def step_prefix(steps: Sequence[str], count: int, separator: str) -> str:
    """The text of the first `count` steps, each ended by the separator."""
    return "".join(step + separator for step in steps[:count])


def check_stepwise_row(row: Mapping, columns: Mapping[str, str], where: str, separator: str) -> dict:
    """{"prompt", "completions", "labels"} (labels as bools), or a DataError naming `where` (file and row)."""
    column = {f: columns.get(f, f) for f in FIELDS}
    for field in FIELDS:
        if row.get(column[field]) is None:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise DataError(
                f"{where}: missing column {column[field]!r} (schema stepwise needs {list(FIELDS)}; columns present: "
                f"{present}). Rename the column or map it with data.columns.{field}=<name>."
            )
    prompt, steps, labels = (row[column[f]] for f in FIELDS)
    if isinstance(prompt, list) or any(isinstance(step, list | dict) for step in _as_list(steps)):
        raise DataError(
            f"{where}: a conversational stepwise row (messages in {column['prompt']!r} or {column['completions']!r}) "
            "is not supported: write the prompt and each step as text."
        )
    if not isinstance(prompt, str):
        raise DataError(f"{where}: column {column['prompt']!r} must be text, got {type(prompt).__name__} {prompt!r}.")
    if not isinstance(steps, list) or not isinstance(labels, list):
        bad = column["completions"] if not isinstance(steps, list) else column["labels"]
        raise DataError(f"{where}: column {bad!r} must be a list (one entry per step), got {type(row[bad]).__name__}.")
    if not steps:
        raise DataError(f"{where}: column {column['completions']!r} has no steps: a stepwise row needs at least one.")
    if len(steps) != len(labels):
        raise DataError(
            f"{where}: {len(steps)} steps but {len(labels)} labels: give one label per step "
            f"({column['completions']!r} and {column['labels']!r})."
        )
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, str):
            raise DataError(f"{where}: step {number} must be text, got {type(step).__name__} {step!r}.")
        if not step.strip():
            raise DataError(f"{where}: step {number} is empty: every step must have text.")
        if separator in step:
            raise DataError(
                f"{where}: step {number} contains data.step_separator {separator!r}, so it would read as two steps. "
                "Split it into two steps, or choose another data.step_separator."
            )
    return {"prompt": prompt, "completions": list(steps), "labels": [check_label(v, n, where) for n, v in enumerate(labels, 1)]}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def check_label(value: Any, number: int, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise DataError(f"{where}: label {number} is {value!r}: step labels are true/false (or 0/1).")


def expand_steps(rows: Sequence[Mapping], separator: str) -> list[dict]:
    """One pointwise row per step prefix of each checked stepwise row (see the module docstring); `step` is its
    1-based number in its solution."""
    return [
        {"prompt": row["prompt"], "response": step_prefix(row["completions"], i, separator), "label": float(label), "step": i}
        for row in rows
        for i, label in enumerate(row["labels"], start=1)
    ]
