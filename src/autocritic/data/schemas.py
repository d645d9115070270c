"""The three critic data schemas, their column mapping, and row-by-row validation.

    pointwise  {prompt, response, label}      label in {0, 1} (or a probability in [0, 1])
    scalar     {prompt, response, score}      any finite number
    pairwise   {prompt, chosen, rejected}

Every problem is reported with the file and the row (1-based line for JSON lines) before training starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from autocritic.errors import DataError

SCHEMAS: dict[str, tuple[str, ...]] = {
    "pointwise": ("prompt", "response", "label"),
    "scalar": ("prompt", "response", "score"),
    "pairwise": ("prompt", "chosen", "rejected"),
}
TEXT_FIELDS = {"prompt", "response", "chosen", "rejected"}
LARGEST_VALUE = 1e18  # the squared error of a larger score overflows float32 (3.4e38)


def check_schema(schema: str) -> tuple[str, ...]:
    if schema not in SCHEMAS:
        raise DataError(f"data.schema={schema!r} is unknown: use one of {sorted(SCHEMAS)}.")
    return SCHEMAS[schema]


def check_row(row: Mapping, schema: str, columns: Mapping[str, str], where: str) -> dict:
    """Return the row in canonical field names, or raise DataError naming `where` (file and row)."""
    out = {}
    for field in check_schema(schema):
        column = columns.get(field, field)
        if column not in row:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise DataError(
                f"{where}: missing column {column!r} (schema {schema} needs {list(SCHEMAS[schema])}; columns "
                f"present: {present}). Rename the column or map it with data.columns.{field}=<name>."
            )
        value = row[column]
        if value is None:
            raise DataError(f"{where}: column {column!r} has no value (an empty cell, or a key missing in this row)")
        if field in TEXT_FIELDS:
            if not isinstance(value, str):
                raise DataError(f"{where}: column {column!r} must be text, got {type(value).__name__} {value!r}.")
            if field != "prompt" and not value.strip():
                raise DataError(f"{where}: column {column!r} is empty: every response must have text.")
        else:
            if isinstance(value, bool):
                value = int(value)
            written = value
            if isinstance(value, str):  # CSV cells are text
                try:
                    value = float(value)
                except ValueError:
                    pass
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(f"{where}: column {column!r} must be a finite number, got {written!r}.")
            if abs(value) > LARGEST_VALUE:
                raise DataError(
                    f"{where}: column {column!r} is {written!r}, too large for float32 training (its squared error "
                    f"overflows above {LARGEST_VALUE:.0e}). Rescale the column, e.g. to [0, 1]."
                )
            if field == "label" and not 0 <= value <= 1:
                raise DataError(f"{where}: label {value!r} is out of range: labels are 0/1 (or a probability).")
            value = float(value)
        out[field] = value
    return out


def check_rows(rows: Iterable[Mapping], schema: str, columns: Mapping[str, str], source: str) -> list[dict]:
    return [check_row(row, schema, columns, f"{source}, row {i}") for i, row in enumerate(rows, start=1)]


def scan_json_lines(path: Path) -> list[dict]:
    """The objects of a JSON-lines file, read as written (no type coercion: `"NaN"` stays the text it is); the line
    of undecodable bytes or broken JSON is named."""
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid UTF-8 ({error.reason}). Re-encode the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}).") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}, line {number}: each line must be a JSON object, got {type(value).__name__}.")
            rows.append(value)
    return rows


def scan_text(path: Path) -> None:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({error.reason}). Re-encode the file as UTF-8.") from None
