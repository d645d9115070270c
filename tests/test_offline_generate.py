"""Self-generated critic data: schema, exact prompts, duplicates, held-out splits, skipping, pluggable labels."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import tiny_pretrain_settings
from transformers import AutoTokenizer, FalconForCausalLM

from autocritic.model.complete import complete, cut_at_stop
from autocritic.offline.generate import (
    CARD,
    GenerateSettings,
    build_critic_data,
    label_split,
    output_files,
    read_problems,
)
from autocritic.offline.labelling import label_final_number
from autocritic.offline.pretrain import build_backbone
from autocritic.offline.tasks import Problem, few_shot_prompts, make_splits, render, split_of

SETTINGS = GenerateSettings(
    train_problems=6, val_problems=3, test_problems=3, samples=4, temperature=1.0, batch_size=16
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    settings = tiny_pretrain_settings(max_steps=10)
    return build_backbone(settings, tmp_path_factory.mktemp("offline") / "backbone", progress=False)


@pytest.fixture(scope="module")
def data(backbone, tmp_path_factory):
    return build_critic_data(
        backbone, SETTINGS, tmp_path_factory.mktemp("offline") / "critic", progress=False
    )


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pointwise_rows_are_exact_prompts_and_continuations(data):
    test_questions = {
        p.question for p in make_splits(0, train=6, val=3, test=3, families=["arithmetic"])["test"]
    }
    for split in ("train", "val", "test"):
        rows = read(data / f"{split}.jsonl")
        assert rows and all(set(r) == {"prompt", "response", "label"} and r["label"] in (0, 1) for r in rows)
        assert all(r["response"].strip() and "\n" not in r["response"] for r in rows)
        assert all(r["prompt"].endswith("\nAnswer:") and r["prompt"].count("Question:") == 3 for r in rows)
        assert len({(r["prompt"], r["response"]) for r in rows}) == len(rows)
        if split == "test":
            asked = {r["prompt"].rsplit("Question: ", 1)[1].split("\n")[0] for r in rows}
            assert asked <= test_questions


def test_card_counts_add_up(data):
    card = json.loads((data / CARD).read_text())
    for split, counts in card["splits"].items():
        assert counts["generated"] == counts["problems"] * SETTINGS.samples
        dropped = counts["empty"] + counts["duplicates"] + counts["unlabelled"]
        assert counts["rows"] == counts["generated"] - dropped == len(read(data / f"{split}.jsonl"))
        assert counts["positives"] + counts["negatives"] == counts["rows"]
        assert counts["pairs"] == len(read(data / f"pairs_{split}.jsonl"))


def test_outputs_are_skipped_then_rebuilt_when_settings_change(backbone, data):
    stamps = {path: path.stat().st_mtime_ns for path in output_files(data)}
    build_critic_data(backbone, SETTINGS, data, progress=False)
    assert {path: path.stat().st_mtime_ns for path in output_files(data)} == stamps
    build_critic_data(backbone, dataclasses.replace(SETTINGS, samples=2), data, progress=False)
    assert json.loads((data / CARD).read_text())["splits"]["test"]["generated"] == 3 * 2


def test_label_split_drops_duplicates_and_pairs_right_with_wrong():
    problem = Problem("arithmetic", "What is 23+45?", "68", 2, "add_2d", "23+45")
    rows, pairs, counts = label_split(
        [problem], ["P:"], [[" 68", " 68", " 69", " ", " 7"]], label_final_number, 4, 0
    )
    assert [r["response"] for r in rows] == [" 68", " 69", " 7"] and [r["label"] for r in rows] == [1, 0, 0]
    assert counts["duplicates"] == 1 and counts["empty"] == 1 and counts["problems_with_both"] == 1
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {(" 68", " 69"), (" 68", " 7")}


def test_custom_label_fn_and_problems(backbone, tmp_path):
    def gsm8k(text: str) -> bool | None:
        return None  # cannot judge anything: every sample is dropped

    problems = {
        split: [Problem("gsm8k", f"What is {i}+1?", str(i + 1), 0, "gsm8k")]
        for i, split in enumerate(("train", "val", "test"))
    }
    out = build_critic_data(
        backbone, SETTINGS, tmp_path, label_fn=lambda p, r: gsm8k(r), problems=problems, progress=False
    )
    card = json.loads((out / CARD).read_text())
    assert (
        card["splits"]["val"]["unlabelled"]
        + card["splits"]["val"]["empty"]
        + card["splits"]["val"]["duplicates"]
        == 4
    )
    assert read(out / "val.jsonl") == []


def test_batched_left_padded_greedy_matches_one_by_one(backbone):
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = FalconForCausalLM.from_pretrained(backbone)
    prompts = [
        "Question: What is 1+1?\nAnswer:",
        "Human: My name is Ada.\nAI: Noted.\nHuman: What is my name?\nAI:",
    ]
    batched = complete(model, tokenizer, prompts, max_new_tokens=6)
    assert batched == [complete(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert cut_at_stop("12\nQuestion", ["\n"]) == "12"


def test_samples_share_the_prefill_and_equal_generates(backbone):
    """Each prompt runs once for its samples (`prefill_for_samples`); the texts are those of
    `generate(num_return_sequences=n)` under the same seed."""
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = FalconForCausalLM.from_pretrained(backbone)
    prompts = ["Question: What is 1+1?\nAnswer:", "Question: What is 12+30?\nAnswer:", "Human: Hi.\nAI:"]
    rows: list[int] = []
    hook = model.transformer.register_forward_hook(lambda module, args, output: rows.append(output[0].shape[0]))
    try:
        ours = complete(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, num_samples=4, seed=5)
    finally:
        hook.remove()
    assert rows[0] == len(prompts) and set(rows[1:]) == {len(prompts) * 4}

    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i])["input_ids"]))
    tokenizer.padding_side = "left"
    batch = tokenizer([prompts[i] for i in order], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(5)
    output = model.generate(
        **batch, max_new_tokens=6, num_return_sequences=4, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [ours[order[row // 4]][row % 4] for row in range(len(texts))] == texts


def test_held_out_problems_only_in_val_and_test():
    for split, problems in make_splits(0, train=6, val=3, test=3, families=["arithmetic"]).items():
        assert all(split_of(p) == split for p in problems)


def test_read_problems_gsm8k_style(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(
        json.dumps({"question": "Tom has 40 apples and buys 2. How many?", "answer": "40 + 2 = 42\n#### 42"})
        + "\n"
        + json.dumps({"question": "No final answer here?", "answer": "dunno"})
        + "\n"
    )
    problems = read_problems(path, extract=lambda text: text.split("####")[-1] if "####" in text else None)
    assert len(problems) == 1 and problems[0].answer == "42"
    assert (
        render(problems[0])
        == "Question: Tom has 40 apples and buys 2. How many?\nAnswer: 40 + 2 = 42\n#### 42"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"samples": 0}, r"samples=0 must be ≥ 1"),
        ({"temperature": -1.0}, r"temperature=-1.0 must be ≥ 0"),
        ({"train_problems": 0}, r"train_problems=0 must be ≥ 1"),
        ({"families": ()}, "families is empty"),
    ],
)
def test_settings_out_of_range_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        GenerateSettings(**change)


def test_a_rebuild_that_fails_leaves_the_previous_data_in_place(backbone, tmp_path, monkeypatch):
    from autocritic.offline import generate

    out = build_critic_data(backbone, SETTINGS, tmp_path / "critic", progress=False)
    before = {path.name: path.read_bytes() for path in output_files(out)}

    calls = []

    def killed(*args, **kwargs):  # the val split's prompts: the train split's files are written
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-build")
        return few_shot_prompts(*args, **kwargs)

    monkeypatch.setattr(generate, "few_shot_prompts", killed)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_critic_data(backbone, dataclasses.replace(SETTINGS, samples=2), out, progress=False)
    assert {path.name: path.read_bytes() for path in output_files(out)} == before
    assert not out.with_name(out.name + ".partial").exists()  # the cut build's files are gone too
