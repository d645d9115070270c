"""Data: the three schemas from jsonl/csv/parquet, column mapping, val split, errors naming file and row, truncation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_jsonl

from autocritic.data.datamodule import CriticDataModule, DataSettings, EpochShuffle
from autocritic.errors import DataError
from autocritic.model.backbone import load_tokenizer

ROWS = {
    "pointwise": [
        {"prompt": "Q: 1+2=? A:", "response": "3", "label": 1},
        {"prompt": "Q: 2+2=? A:", "response": "5", "label": 0},
        {"prompt": "Q: 3+4=? A:", "response": "7", "label": 1},
        {"prompt": "Q: 9+9=? A:", "response": "17", "label": 0},
    ],
    "scalar": [
        {"prompt": "Q: 1+2=? A:", "response": "3", "score": 0.9},
        {"prompt": "Q: 2+2=? A:", "response": "5", "score": -1.5},
        {"prompt": "Q: 3+4=? A:", "response": "7", "score": 2.0},
    ],
    "pairwise": [
        {"prompt": "Q: 1+2=? A:", "chosen": "3", "rejected": "4"},
        {"prompt": "Q: 2+2=? A:", "chosen": "4", "rejected": "5"},
        {"prompt": "Q: 3+4=? A:", "chosen": "7", "rejected": "12"},
    ],
}
TARGET = {"pointwise": "label", "scalar": "score"}


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return load_tokenizer(str(tiny_backbone))


def write(path: Path, rows: list[dict]) -> Path:
    """jsonl, csv or parquet by the suffix. CSV keeps numeric-looking responses ("3") as they are written."""
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def datamodule(tokenizer, **settings) -> CriticDataModule:
    dm = CriticDataModule(DataSettings(**{"template": "{prompt} {response}"} | settings), tokenizer)
    dm.setup()
    return dm


# ---- schemas and formats ----
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("schema", list(ROWS))
def test_each_schema_loads_from_each_format(tokenizer, tmp_path, schema, fmt):
    rows = ROWS[schema]
    train = write(tmp_path / f"train.{fmt}", rows)
    val = write(tmp_path / f"val.{fmt}", rows[:2])
    dm = datamodule(tokenizer, schema=schema, train_files=[str(train)], val_files=[str(val)], batch_size=2)
    assert len(dm.encoded["train"]) == len(rows) and len(dm.encoded["val"]) == 2
    if schema == "pairwise":
        first = dm.encoded["train"][0]
        assert first["ids"][0] == tokenizer("Q: 1+2=? A: 3")["input_ids"]
        assert first["ids"][1] == tokenizer("Q: 1+2=? A: 4")["input_ids"]
        assert [it["target"] for it in dm.encoded["train"]] == [1.0] * len(rows)
    else:
        assert dm.encoded["train"][1]["ids"][0] == tokenizer("Q: 2+2=? A: 5")["input_ids"]
        assert [it["target"] for it in dm.encoded["train"]] == [float(r[TARGET[schema]]) for r in rows]
    batch = next(iter(dm.val_dataloader()))
    n_seq = 4 if schema == "pairwise" else 2  # pairwise: chosen rows, then rejected rows
    # Pairs share their prompt (shared-prompt batch); these pointwise rows all have distinct prompts (plain batch).
    rows_of = batch["answer_ids"] if schema == "pairwise" else batch["input_ids"]
    assert rows_of.shape[0] == n_seq and batch["target"].shape == (2,)


def test_column_mapping(tokenizer, tmp_path):
    rows = [{"question": r["prompt"], "answer": r["response"], "ok": r["label"]} for r in ROWS["pointwise"]]
    train = write(tmp_path / "train.jsonl", rows)
    columns = {"prompt": "question", "response": "answer", "label": "ok"}
    dm = datamodule(tokenizer, train_files=[str(train)], val_files=[str(train)], columns=columns)
    assert [it["target"] for it in dm.encoded["train"]] == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(DataError, match="map it with data.columns.prompt"):
        datamodule(tokenizer, train_files=[str(train)], val_files=[str(train)])


def test_val_split_made_from_train(tokenizer, tmp_path):
    rows = [{"prompt": f"Q: {i}+0=? A:", "response": str(i), "label": i % 2} for i in range(20)]
    train = write(tmp_path / "train.jsonl", rows)
    dm = datamodule(tokenizer, train_files=[str(train)], val_fraction=0.25, seed=3)
    assert len(dm.encoded["val"]) == 5 and len(dm.encoded["train"]) == 15
    as_key = lambda items: {tuple(it["ids"][0]) for it in items}  # noqa: E731
    assert not as_key(dm.encoded["val"]) & as_key(dm.encoded["train"])
    again = datamodule(tokenizer, train_files=[str(train)], val_fraction=0.25, seed=3)
    assert as_key(again.encoded["val"]) == as_key(dm.encoded["val"])  # the seed fixes the split
    assert dm.stats["data/val_examples"] == 5 and dm.stats["data/test_examples"] == 0


def test_csv_cells_are_text_and_numbers_are_parsed(tokenizer, tmp_path):
    """A numeric answer stays text, a label parses as a number, and Excel's byte-order mark is ignored."""
    train = tmp_path / "train.csv"
    train.write_bytes("\ufeffprompt,response,label\nQ: 1+2=? A:,3,1\nQ: 2+2=? A:,05,0.0\n".encode())
    dm = datamodule(tokenizer, train_files=[str(train)], val_files=[str(train)])
    assert dm.encoded["train"][1]["ids"][0] == tokenizer("Q: 2+2=? A: 05")["input_ids"]  # not the int 5
    assert [it["target"] for it in dm.encoded["train"]] == [1.0, 0.0]


def test_several_files_are_concatenated(tokenizer, tmp_path):
    a = write(tmp_path / "a.jsonl", ROWS["pointwise"][:2])
    b = write(tmp_path / "b.csv", ROWS["pointwise"][2:])
    dm = datamodule(tokenizer, train_files=[str(a), str(b)], val_files=[str(a)])
    assert len(dm.encoded["train"]) == 4


# ---- bad input: a DataError naming the file and the row ----
GOOD = {"prompt": "Q: 1+1=? A:", "response": "2", "label": 1}
JSON_LINE = json.dumps(GOOD) + "\n"
CASES = {
    "missing column": ("jsonl", [{"prompt": "p", "response": "r"}] * 2, "row 1: missing column 'label'"),
    "missing key": ("jsonl", [GOOD, GOOD, {"prompt": "p", "label": 1}], "row 3: missing column 'response'"),
    "null value": ("jsonl", [GOOD, GOOD, GOOD | {"response": None}], "row 3: column 'response' has no value"),
    "NaN as text": ("jsonl", [GOOD, GOOD | {"label": "NaN"}], "row 2: column 'label' must be a finite number, got 'NaN'"),
    "NaN score": ("jsonl", [GOOD, GOOD | {"label": float("nan")}], "row 2: column 'label' must be a finite number"),
    "wrong type": ("jsonl", [GOOD, GOOD | {"label": "yes"}], "row 2: column 'label' must be a finite number"),
    "wrong text type": ("jsonl", [GOOD | {"response": 7}], "row 1: column 'response' must be text"),
    "wrong type csv": (
        "csv",
        [GOOD, GOOD, GOOD | {"label": "yes"}],
        "row 3: column 'label' must be a finite number",
    ),
    "label out of range": ("jsonl", [GOOD, GOOD | {"label": 2}], "row 2: label 2 is out of range"),
    "label out of range csv": ("csv", [GOOD | {"label": -1}], "row 1: label -1.0 is out of range"),
    "empty response": ("jsonl", [GOOD, GOOD, GOOD | {"response": "  "}], "row 3: column 'response' is empty"),
    "empty response csv": (
        "csv",
        [GOOD, GOOD | {"response": ""}],
        "row 2: column 'response' has no value|is empty",
    ),
    "invalid utf-8": (
        "jsonl",
        JSON_LINE.encode() + b'{"prompt": "\xff\xfe", "response": "r", "label": 1}\n',
        "line 2: not valid UTF-8",
    ),
    "invalid utf-8 csv": ("csv", b"prompt,response,label\np,r,1\np,\xff,1\n", "line 3: not valid UTF-8"),
    "broken json": (
        "jsonl",
        (JSON_LINE * 2 + '{"prompt": "p", "response": \n').encode(),
        "line 3: not valid JSON",
    ),
    "not an object": ("jsonl", (JSON_LINE + "[1, 2]\n").encode(), "line 2: each line must be a JSON object"),
    "empty file": ("jsonl", b"", "is empty"),
    "unsupported extension": ("txt", b"prompt\tresponse\tlabel\n", "unsupported extension '.txt'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_and_row(tokenizer, tmp_path, case):
    fmt, content, message = CASES[case]
    path = tmp_path / f"bad_{case.replace(' ', '_')}.{fmt}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    with pytest.raises(DataError, match=message) as error:
        datamodule(tokenizer, train_files=[str(path)])
    assert str(path) in str(error.value)


def test_bad_scalar_and_pairwise_rows(tokenizer, tmp_path):
    scalar = write(
        tmp_path / "scalar.csv", ROWS["scalar"] + [{"prompt": "p", "response": "r", "score": "nan"}]
    )
    with pytest.raises(DataError, match=r"scalar.csv, row 4: column 'score' must be a finite number"):
        datamodule(tokenizer, schema="scalar", train_files=[str(scalar)])
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"pairs.jsonl, row 1: missing column 'rejected'"):
        datamodule(tokenizer, schema="pairwise", train_files=[str(pairs)])


def test_missing_file_and_no_training_rows(tokenizer, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match=f"data file {missing} does not exist"):
        datamodule(tokenizer, train_files=[str(missing)])
    with pytest.raises(DataError, match="no training rows"):
        datamodule(tokenizer)
    with pytest.raises(DataError, match="data.schema='ranking' is unknown"):
        CriticDataModule(DataSettings(schema="ranking"), tokenizer)


# ---- tokenization and batches ----
def test_truncation_is_counted_and_keeps_the_end(tokenizer, tmp_path):
    long_prompt = "Q: " + "1+" * 20 + "1=? A:"
    rows = [
        {"prompt": long_prompt, "response": "21", "label": 1},
        {"prompt": "Q: 1+1=? A:", "response": "2", "label": 1},
        {"prompt": long_prompt, "response": "22", "label": 0},
    ]
    train = write(tmp_path / "train.jsonl", rows)
    dm = datamodule(tokenizer, train_files=[str(train)], val_files=[str(train)], max_length=14)
    assert dm.stats["data/train_truncated"] == 2 and dm.stats["data/train_examples"] == 3
    full = tokenizer(long_prompt + " 21")["input_ids"]
    kept = dm.encoded["train"][0]
    assert kept["ids"][0] == full[-14:]  # the end, where the answer is, survives
    assert kept["prompt_len"][0] == 14 - len(
        tokenizer("21")["input_ids"]
    )  # prompt tokens (incl. the space) left
    assert dm.encoded["train"][1]["ids"][0] == tokenizer("Q: 1+1=? A: 2")["input_ids"]


def test_rows_cut_to_max_length_are_said_on_the_console(caplog):
    from autocritic.training.run import warn_truncated

    caplog.set_level("WARNING", logger="autocritic")
    stats = {"data/train_truncated": 2, "data/train_examples": 3, "data/val_truncated": 0, "data/val_examples": 3}
    warn_truncated(stats, 14)
    assert "2 of 3 train rows are longer than data.max_length=14 tokens" in caplog.text
    assert "val rows" not in caplog.text


def test_collate_pads_right_and_labels_only_good_responses(tokenizer, tmp_path):
    train = write(tmp_path / "train.jsonl", ROWS["pointwise"][:2])  # labels 1, 0
    dm = datamodule(tokenizer, train_files=[str(train)], val_files=[str(train)])
    batch = dm.collate_tokens(dm.encoded["train"])
    lengths = [len(it["ids"][0]) for it in dm.encoded["train"]]
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
    prompt_len = dm.encoded["train"][0]["prompt_len"][0]
    ids = dm.encoded["train"][0]["ids"][0]
    assert (batch["lm_labels"][0, :prompt_len] == -100).all()
    assert batch["lm_labels"][0, prompt_len : len(ids)].tolist() == ids[prompt_len:]  # " 3": the response
    assert (batch["lm_labels"][1] == -100).all()  # a wrong answer is never an LM target


def test_pairwise_collate_stacks_chosen_then_rejected(tokenizer, tmp_path):
    train = write(tmp_path / "pairs.jsonl", ROWS["pairwise"][:2])
    dm = datamodule(tokenizer, schema="pairwise", train_files=[str(train)], val_files=[str(train)])
    batch = dm.collate_tokens(dm.encoded["train"])
    real = lambda row: batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()  # noqa: E731
    assert real(0) == tokenizer("Q: 1+2=? A: 3")["input_ids"]
    assert real(1) == tokenizer("Q: 2+2=? A: 4")["input_ids"]
    assert real(2) == tokenizer("Q: 1+2=? A: 4")["input_ids"]
    assert (batch["lm_labels"][:2] != -100).any(-1).all() and (batch["lm_labels"][2:] == -100).all()


def test_feature_batches_match_token_batches(tokenizer, tmp_path):
    train = write(tmp_path / "pairs.jsonl", ROWS["pairwise"])
    dm = datamodule(
        tokenizer, schema="pairwise", train_files=[str(train)], val_files=[str(train)], eval_batch_size=2
    )
    features = {s: torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4) for s in ("train", "val")}
    dm.use_features(features)
    batch = next(iter(dm.val_dataloader()))
    assert batch["features"].shape == (4, 4)  # (S*B, H): chosen rows of the batch, then rejected rows
    assert torch.equal(batch["features"], torch.cat([features["val"][:2, 0], features["val"][:2, 1]]))


def test_train_order_depends_on_seed_and_epoch_only():
    sampler = EpochShuffle(50, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    torch.manual_seed(123)  # the global RNG does not matter
    assert list(EpochShuffle(50, seed=7)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochShuffle(50, seed=8)) != first


def test_length_grouped_order_is_a_seeded_permutation_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 80) for _ in range(640)]

    def padded_tokens(order: list[int], batch: int = 16) -> int:
        return sum(max(lengths[i] for i in order[k : k + batch]) * batch for k in range(0, len(order), batch))

    grouped = EpochShuffle(640, seed=3, lengths=lengths, batch_size=16, megabatch=10)
    first = list(grouped)
    assert sorted(first) == list(range(640)) and list(grouped) == first
    assert padded_tokens(first) < 0.8 * padded_tokens(list(EpochShuffle(640, seed=3)))
    assert lengths[first[0]] == max(lengths)  # the peak memory comes at step one
    grouped.set_epoch(1)
    second = list(grouped)
    assert second != first and sorted(second) == list(range(640)) and lengths[second[0]] == max(lengths)


def test_a_score_that_overflows_float32_training_is_refused_with_file_and_row(tokenizer, tmp_path):
    rows = [{"prompt": "p", "response": "r", "score": 0.5}, {"prompt": "p", "response": "s", "score": 1e39}]
    path = write(tmp_path / "scores.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2: column 'score' is 1e\+39, too large for float32") as error:
        datamodule(tokenizer, schema="scalar", train_files=[str(path)])
    assert str(path) in str(error.value)
