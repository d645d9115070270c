"""Replay documents: plain text the language model keeps training on while the critic is fine-tuned, so the
skills the critic data does not exercise (dialogue, summaries, tool use) are not forgotten (InstructGPT's
pretraining mix, "PPO-ptx").

A replay file is JSON lines, one document per line, either
    {"text": "..."}                                   loss on every token, or
    {"segments": [["Human: ...", false], ["AI: ...", true]]}   loss on the trained pieces only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

from autocritic.data.schemas import scan_json_lines
from autocritic.errors import DataError

Document = list[tuple[str, bool]]


def parse_document(row: object, where: str) -> Document:
    if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"]:
        return [(row["text"], True)]
    segments = row.get("segments") if isinstance(row, dict) else None
    if (
        isinstance(segments, list)
        and segments
        and all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], bool) for s in segments
        )
        and any(trained for _, trained in segments)
    ):
        return [(text, trained) for text, trained in segments]
    raise DataError(
        f"{where}: a replay document must be {{\"text\": \"...\"}} or {{\"segments\": [[text, trained], ...]}} "
        "with at least one trained piece (trained: true or false)."
    )


def read_replay_files(files: Sequence[str]) -> list[Document]:
    documents = []
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"replay file {path} does not exist. Check data.replay_files.")
        if path.suffix.lower() != ".jsonl":
            raise DataError(f"replay file {path}: use JSON lines (.jsonl), one document per line.")
        scan_json_lines(path)  # names the line of bad bytes, broken JSON or a non-object
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if line.strip():
                documents.append(parse_document(json.loads(line), f"{path}, line {number}"))
    if not documents:
        raise DataError(f"data.replay_files {list(files)} hold no document.")
    return documents


def encode_documents(
    documents: Sequence[Document], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(token ids, LM labels) per document, eos appended, cut to `max_length`. Pieces are tokenized one by one
    (as in pretraining), so the labels follow the pieces exactly; untrained tokens are labelled -100."""
    pieces = [text for document in documents for text, _ in document]
    encoded = iter(tokenizer(pieces, add_special_tokens=False)["input_ids"]) if pieces else iter(())
    out = []
    for document in documents:
        ids: list[int] = []
        labels: list[int] = []
        for _, trained in document:
            piece = next(encoded)
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        ids, labels = ids[: max_length - 1], labels[: max_length - 1]
        out.append((ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]))
    return out


class ReplayCycle(Sampler[int]):
    """`length` document indices per epoch of the critic loader. The documents come in a new order each pass,
    drawn from (seed, pass) alone, and each epoch goes on where the last one stopped: a run resumed at an
    epoch boundary replays the same documents as an uninterrupted one."""

    def __init__(self, size: int, length: int, seed: int):
        self.size, self.length, self.seed, self.epoch = size, length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        first_pass, offset = divmod(self.epoch * self.length, self.size)
        passes = -(-(offset + self.length) // self.size)
        order: list[int] = []
        for index in range(first_pass, first_pass + passes):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            order += torch.randperm(self.size, generator=generator).tolist()
        return iter(order[offset : offset + self.length])


def collate_replay(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(row_labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "lm_labels": labels}
