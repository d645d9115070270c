"""The critic data schemas, their column mapping, and row-by-row validation.

    pointwise  {prompt, response, label}      label in {0, 1} (or a probability in [0, 1]; true/false)
    scalar     {prompt, response, score}      any finite number
    pairwise   {prompt, chosen, rejected}
    stepwise   {prompt, completions, labels}  TRL's stepwise supervision: a list of steps, a bool per step
                                              (text only; expanded to pointwise rows, see data/stepwise.py)

Each schema also takes TRL's conversational rows, told apart row by row: text fields may be lists of messages
{"role", "content"} (the prompt a conversation, the answers assistant messages); pointwise and scalar rows may be
one whole conversation `messages` whose last message is the answer; a pointwise `completion` stands for
`response` (TRL's unpaired preference rows); pairwise `chosen` and `rejected` may be whole conversations without a
prompt (their shared first messages are the prompt). Conversational fields come out as `Conversation`s, rendered
to text once the tokenizer is known (`autocritic.chat_format.render_exchange`).

Every problem is reported with the file and the row (1-based line for JSON lines) before training starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autocritic.chat_format import (
    Conversation,
    check_answer,
    check_messages,
    split_conversation,
    split_shared_prompt,
)
from autocritic.data.stepwise import DEFAULT_SEPARATOR, check_stepwise_row
from autocritic.data.stepwise import FIELDS as STEPWISE_FIELDS
from autocritic.errors import DataError

SCHEMAS: dict[str, tuple[str, ...]] = {
    "pointwise": ("prompt", "response", "label"),
    "scalar": ("prompt", "response", "score"),
    "pairwise": ("prompt", "chosen", "rejected"),
    "stepwise": STEPWISE_FIELDS,
}
TEXT_FIELDS = {"prompt", "response", "chosen", "rejected"}
ANSWER_FIELDS = ("response", "chosen", "rejected")
MESSAGES = "messages"  # a whole conversation, in place of prompt and response
COMPLETION = "completion"  # TRL's name for the response of unpaired preference rows
LARGEST_VALUE = 1e18  # the squared error of a larger score overflows float32 (3.4e38)


def check_schema(schema: str) -> tuple[str, ...]:
    if schema not in SCHEMAS:
        raise DataError(f"data.schema={schema!r} is unknown: use one of {sorted(SCHEMAS)}.")
    return SCHEMAS[schema]


def check_row(
    row: Mapping, schema: str, columns: Mapping[str, str], where: str, separator: str = DEFAULT_SEPARATOR
) -> dict:
    """Return the row in canonical field names, or raise DataError naming `where` (file and row). Text fields are
    strings, or `Conversation`s for a conversational row. `separator`: the stepwise schema's step separator."""
    fields = check_schema(schema)
    if schema == "stepwise":
        return check_stepwise_row(row, columns, where, separator)
    column_of = dict(zip(fields, (column_for(f, row, columns) for f in fields), strict=True))
    messages = columns.get(MESSAGES, MESSAGES)
    out: dict[str, Any] = {}
    if schema != "pairwise" and messages in row and not {column_of["prompt"], column_of["response"]} & set(row):
        out["prompt"], out["response"] = split_conversation(check_messages(row[messages], where, messages), where, messages)
    elif schema == "pairwise" and column_of["prompt"] not in row and _are_lists(row, column_of):
        chosen, rejected = (check_messages(row[column_of[f]], where, column_of[f]) for f in ("chosen", "rejected"))
        out["prompt"], out["chosen"], out["rejected"] = split_shared_prompt(chosen, rejected, where)
    else:
        out |= {f: value_of(row, f, column_of[f], schema, columns, where) for f in fields if f in TEXT_FIELDS}
        out = texts_or_conversations(out, column_of, where)
    for f in fields:
        if f not in TEXT_FIELDS:
            out[f] = check_number(f, value_of(row, f, column_of[f], schema, columns, where), column_of[f], where)
    return out


def column_for(field: str, row: Mapping, columns: Mapping[str, str]) -> str:
    """The column that holds `field`: mapped in data.columns, else the field's name (or TRL's `completion` for
    an absent `response`)."""
    if field in columns:
        return columns[field]
    if field == "response" and field not in row and COMPLETION in row:
        return COMPLETION
    return field


def _are_lists(row: Mapping, column_of: Mapping[str, str]) -> bool:
    return all(isinstance(row.get(column_of[f]), list) for f in ("chosen", "rejected"))


def value_of(row: Mapping, field: str, column: str, schema: str, columns: Mapping[str, str], where: str) -> Any:
    if column not in row:
        present = ", ".join(sorted(map(str, row))) or "none"
        raise DataError(
            f"{where}: missing column {column!r} (schema {schema} needs {list(SCHEMAS[schema])}; columns "
            f"present: {present}). Rename the column or map it with data.columns.{field}=<name>."
            + conversational_hint(schema)
        )
    value = row[column]
    if value is None:
        raise DataError(f"{where}: column {column!r} has no value (an empty cell, or a key missing in this row)")
    return value


def conversational_hint(schema: str) -> str:
    if schema == "pairwise":
        return " A conversational row may leave out the prompt when chosen and rejected are whole conversations."
    return f" A conversational row may hold one conversation {MESSAGES!r} (its last message the answer) instead."


def texts_or_conversations(values: dict, column_of: Mapping[str, str], where: str) -> dict:
    """Text fields all text, or all lists of messages (a prompt conversation and assistant answers)."""
    if not any(isinstance(v, list) for v in values.values()):
        for field, value in values.items():
            column = column_of[field]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: column {column!r} must be text (or a list of messages), got "
                    f"{type(value).__name__} {value!r}."
                )
            if field != "prompt" and not value.strip():
                raise DataError(f"{where}: column {column!r} is empty: every response must have text.")
        return values
    kinds = {column_of[f]: "a list of messages" if isinstance(v, list) else type(v).__name__ for f, v in values.items()}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{c!r} is {k}" for c, k in kinds.items())
        raise DataError(
            f"{where}: a row is all text or all conversation ({shown}): write every one of these columns as a "
            "list of messages, or every one as text."
        )
    out = {}
    for field, value in values.items():
        column = column_of[field]
        messages = check_messages(value, where, column)
        if field in ANSWER_FIELDS:
            check_answer(messages, where, column)
        out[field] = Conversation(messages, where)
    return out


def check_number(field: str, value: Any, column: str, where: str) -> float:
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
    return float(value)


def check_rows(
    rows: Iterable[Mapping], schema: str, columns: Mapping[str, str], source: str, separator: str = DEFAULT_SEPARATOR
) -> list[dict]:
    return [check_row(row, schema, columns, f"{source}, row {i}", separator) for i, row in enumerate(rows, start=1)]


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
