"""Your problems: a json / jsonl / csv / parquet file with a question and its answer per row, read as training
reads its files, and split train / val / test by problem (the answers to one question never cross splits)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autocritic.data.datamodule import read_local_file
from autocritic.errors import DataError

FIELDS = ("question", "answer")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str


def as_text(value, where: str, column: str) -> str:
    """Text as written; a number (a JSON answer such as 42) as its text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: column {column!r} must be text, got {type(value).__name__} {value!r}.")
    text = value if isinstance(value, str) else format(value, "g") if isinstance(value, float) else str(value)
    if not text.strip():
        raise DataError(f"{where}: column {column!r} is empty.")
    return text


def read_problems(path: str, columns: Mapping[str, str]) -> list[Problem]:
    """Every row checked: the file and row of a missing column or an empty question are named."""
    if not Path(path).expanduser().is_file():
        raise DataError(f"generate.problems={path!r} is not a file: a json/jsonl/csv/parquet file of {list(FIELDS)}.")
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise DataError(f"generate.columns has unknown fields {unknown}: map {list(FIELDS)}, e.g. {{question: q}}.")
    problems = []
    for number, row in enumerate(read_local_file(str(Path(path).expanduser())), start=1):
        where = f"{path}, row {number}"
        values = []
        for field in FIELDS:
            column = columns.get(field, field)
            if row.get(column) is None:
                raise DataError(
                    f"{where}: missing column {column!r} (columns present: {', '.join(sorted(map(str, row)))}). "
                    f"Map it with generate.columns.{field}=<name>."
                )
            values.append(as_text(row[column], where, column))
        problems.append(Problem(*values))
    if not problems:
        raise DataError(f"{path}: no problems.")
    return problems


def split_by_problem(
    problems: Sequence[Problem], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Problem]]:
    """A seeded shuffle of the distinct questions, cut by the fractions (at least one question in a split whose
    fraction is above 0); rows that repeat a question go with it."""
    by_question: dict[str, list[Problem]] = {}
    for problem in problems:
        by_question.setdefault(problem.question.strip(), []).append(problem)
    questions = list(by_question)
    random.Random(seed).shuffle(questions)
    sizes = [max(1, round(f * len(questions))) if f > 0 else 0 for f in (val_fraction, test_fraction)]
    if sum(sizes) >= len(questions):
        raise DataError(
            f"{len(questions)} distinct questions are too few for generate.val_fraction={val_fraction} and "
            f"generate.test_fraction={test_fraction}: the training split would be empty. Add problems or lower them."
        )
    val, test = questions[: sizes[0]], questions[sizes[0] : sum(sizes)]
    train = questions[sum(sizes) :]
    return {split: [p for q in chosen for p in by_question[q]] for split, chosen in zip(SPLITS, (train, val, test), strict=True)}
