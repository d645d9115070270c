"""Chains of sums worked step by step: the problems, their exact step labels, their data and their preset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re

import pytest
from helpers import compose_train, tiny_pretrain_settings

from autocritic.formats import ANSWER_PREFIX, STEP_SEPARATOR
from autocritic.offline.documents import DOCUMENT_KINDS, document_text, iter_documents
from autocritic.offline.generate import CARD, GenerateSettings, build_critic_data, output_files, step_rows
from autocritic.offline.pretrain import PretrainSettings, build_backbone
from autocritic.offline.steps import chain_step_labels, split_steps
from autocritic.offline.tasks import (
    Problem,
    chain_problem,
    completion_of,
    evaluate_expression,
    make_splits,
    prompt_of,
    split_of,
)

STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)")


def chain(expression: str) -> Problem:
    """A chain problem as the generator writes it, for hand-written cases."""
    terms = re.findall(r"([+-]?)(\d+)", expression)
    value, steps = int(terms[0][1]), []
    for op, number in terms[1:]:
        result = value + int(number) if op == "+" else value - int(number)
        steps.append(f"{value}{op}{number}={result}")
        value = result
    return Problem(
        "chain",
        f"What is {expression}?",
        str(value),
        len(terms) - 1,
        f"chain_{len(terms)}",
        expression,
        STEP_SEPARATOR.join([*steps, f"{ANSWER_PREFIX} {value}"]),
    )


def test_chain_solutions_are_right_and_parse():
    rng = random.Random(1)
    problems = [chain_problem(rng) for _ in range(500)]
    assert {p.kind for p in problems} == {"chain_3", "chain_4", "chain_5"}
    for problem in problems:
        operands = len(re.findall(r"\d+", problem.expression))
        assert 3 <= operands <= 5 and problem.level == operands - 1 and problem.kind == f"chain_{operands}"
        assert problem.question == f"What is {problem.expression}?"
        assert problem.answer == str(int(evaluate_expression(problem.expression)))
        steps = split_steps(problem.solution)
        assert len(steps) == operands and steps[-1] == f"Answer: {problem.answer}"
        running = int(re.match(r"\d+", problem.expression)[0])
        for step in steps[:-1]:
            a, op, b, c = STEP.fullmatch(step).groups()
            assert int(a) == running and int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
            running = int(c)
        assert chain_step_labels(problem, steps) == [True] * operands
        assert prompt_of(problem) == f"Question: {problem.question}\n"
        assert completion_of(problem) == problem.solution and not problem.solution.endswith("\n")


def test_split_is_a_function_of_the_expression_and_splits_do_not_overlap():
    splits = make_splits(0, train=40, val=20, test=20, families=["chain"])
    keys = {split: {p.key for p in problems} for split, problems in splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"]) and not (keys["train"] & keys["val"])
    for split, problems in splits.items():
        for problem in problems:
            assert split_of(problem) == split
            moved = dataclasses.replace(problem, solution=None, level=0, kind="x")  # only the expression counts
            assert split_of(moved) == split
    assert make_splits(5, train=40, val=20, test=20, families=["chain"])["test"] != splits["test"]


def test_step_labels_of_hand_written_chains():
    problem = chain("58+27-19")
    assert problem.answer == "66"
    assert chain_step_labels(problem, ["58+27=85", "85-19=66", "Answer: 66"]) == [True, True, True]
    # a wrong middle step makes it and every later step wrong, even a right final answer
    assert chain_step_labels(problem, ["58+27=84", "84-19=66", "Answer: 66"]) == [False, False, False]
    assert chain_step_labels(problem, ["58+27=85", "85-19=67", "Answer: 66"]) == [True, False, False]
    # the right result on the wrong running value, or the wrong operand or operator, is wrong
    assert chain_step_labels(problem, ["58+27=85", "84-18=66", "Answer: 66"]) == [True, False, False]
    assert chain_step_labels(problem, ["58+27=85", "85+19=104", "Answer: 104"]) == [True, False, False]
    # a wrong answer step, an early answer, an extra step, a missing answer
    assert chain_step_labels(problem, ["58+27=85", "85-19=66", "Answer: 67"]) == [True, True, False]
    assert chain_step_labels(problem, ["58+27=85", "Answer: 66"]) == [True, False]
    assert chain_step_labels(problem, ["58+27=85", "85-19=66", "Answer: 66", "Answer: 66"]) == [True, True, True, False]
    assert chain_step_labels(problem, ["58+27=85", "85-19=66"]) == [True, True]
    assert chain_step_labels(problem, ["58 + 27 = 85", "hello", "Answer: 66"]) == [True, False, False]
    assert chain_step_labels(problem, []) == []
    with pytest.raises(ValueError, match="not a chain"):
        chain_step_labels(Problem("arithmetic", "What is 1+2?", "3", 1, "add_1d", "1+2"), ["Answer: 3"])


def test_split_steps():
    assert split_steps("58+27=85\n85-19=66\nAnswer: 66") == ["58+27=85", "85-19=66", "Answer: 66"]
    assert split_steps("58+27=85\n") == ["58+27=85"]
    assert split_steps("58+27=85\n\nx") == ["58+27=85", "", "x"]
    assert split_steps("") == []


def test_the_default_mix_draws_the_same_documents_without_chains():
    assert "chain" in DOCUMENT_KINDS and "chain" not in PretrainSettings().mix
    # The default stream, pinned: adding a family must not move a draw of the default backbone's documents.
    documents = iter_documents(3, PretrainSettings().mix)
    texts = [document_text(next(documents)) for _ in range(300)]
    assert not any(re.search(r"\n\d+[+-]\d+=", t) for t in texts)
    assert hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16] == DEFAULT_STREAM_DIGEST


# The first 300 documents of the default mix (seed 3) as the code drew them before chains existed.
DEFAULT_STREAM_DIGEST = "6c9a024021045bf1"


def test_chain_documents_start_with_a_chain_and_run_in_shots():
    documents = iter_documents(0, {"chain": 1.0})
    texts = [document_text(next(documents)) for _ in range(100)]
    assert all(t.startswith("Question: What is ") for t in texts)
    runs = [t.split("\n\n") for t in texts]
    assert {len(r) for r in runs} == {1, 2, 3, 4}
    assert all(shot.split("\n")[-1].startswith("Answer: ") for r in runs for shot in r)


def test_step_rows_label_each_distinct_answer():
    problem = chain("58+27-19")
    responses = [["58+27=85\n85-19=66\nAnswer: 66", "58+27=85\n85-19=66\nAnswer: 66", " ", "58+27=84\n84-19=65\nAnswer: 65"]]
    rows, counts = step_rows([problem], ["Question: What is 58+27-19?\n"], responses)
    assert rows == [
        {"prompt": "Question: What is 58+27-19?\n", "completions": ["58+27=85", "85-19=66", "Answer: 66"], "labels": [True] * 3},
        {
            "prompt": "Question: What is 58+27-19?\n",
            "completions": ["58+27=84", "84-19=65", "Answer: 65"],
            "labels": [False] * 3,
        },
    ]
    assert counts["steps"] == 6 and counts["positive_steps"] == 3 and counts["rows_all_steps_right"] == 1
    arithmetic = Problem("arithmetic", "What is 1+2?", "3", 1, "add_1d", "1+2")
    assert step_rows([arithmetic], ["P"], [[" 3"]])[0] == []


def test_generate_writes_step_rows_for_chains(tmp_path):
    settings = tiny_pretrain_settings(max_steps=10, mix={"chain": 0.9, "arithmetic": 0.1})
    backbone = build_backbone(settings, tmp_path / "backbone", progress=False)
    generate = GenerateSettings(
        families=("chain",), train_problems=4, val_problems=2, test_problems=2, samples=3, temperature=1.0,
        shots=0, max_new_tokens=24, stop=("\n\n",), batch_size=16,
    )
    out = build_critic_data(backbone, generate, tmp_path / "critic", progress=False)
    assert all(path.is_file() for path in output_files(out, stepwise=True))
    card = json.loads((out / CARD).read_text())
    for split in ("train", "val", "test"):
        outcome = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        steps = [json.loads(line) for line in (out / f"steps_{split}.jsonl").read_text().splitlines()]
        assert len(steps) == len(outcome) == card["splits"][split]["steps"]["rows"]
        assert card["splits"][split]["steps"]["steps"] == sum(len(row["labels"]) for row in steps)
        for row, sample in zip(steps, outcome, strict=True):
            assert row["prompt"] == sample["prompt"] and row["prompt"].startswith("Question: What is ")
            assert row["prompt"].endswith("?\n") and "\n\n" not in row["prompt"]
            assert STEP_SEPARATOR.join(row["completions"]) == sample["response"].removesuffix("\n")
            assert len(row["labels"]) == len(row["completions"]) and all(isinstance(x, bool) for x in row["labels"])
    assert build_critic_data(backbone, generate, out, progress=False) == out  # built: skipped


def test_the_steps_preset_composes():
    cfg = compose_train(["experiment=steps"])
    assert cfg.paths.offline == "data/offline-steps"
    assert cfg.model.name_or_path == "data/offline-steps/backbone"
    mix = {kind: weight for kind, weight in cfg.offline.pretrain.mix.items() if weight}
    assert max(mix, key=mix.get) == "chain" and set(mix) <= {"chain", "arithmetic"}
    assert list(cfg.offline.generate.families) == ["chain"] and cfg.offline.generate.shots == 0
    assert list(cfg.offline.generate.stop) == ["\n\n"]
    PretrainSettings(**{**cfg.offline.pretrain, "mix": dict(cfg.offline.pretrain.mix)})
    outcome = compose_train(["experiment=steps", "data=offline-steps-outcome"])
    assert list(outcome.data.train_files) == ["data/offline-steps/critic/train.jsonl"]
    assert outcome.data.schema == "pointwise" and outcome.data.offline_default
    steps = compose_train(["experiment=steps", "data=offline-steps"])
    assert steps.data.schema == "stepwise"
    assert list(steps.data.test_files) == ["data/offline-steps/critic/steps_test.jsonl"]
    assert compose_train().paths.offline == "data/offline"


def test_an_outcome_critic_trains_on_the_step_world_built_on_first_use(tmp_path):
    from autocritic.training import run

    tiny = tiny_pretrain_settings(max_steps=10)
    pretrain = [
        f"offline.pretrain.{name}={getattr(tiny, name)}"
        for name in ("tokenizer_documents", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "batch_size", "lr", "warmup_steps", "max_steps")
    ]
    generate = [f"offline.generate.{name}={value}" for name, value in
                {"train_problems": 8, "val_problems": 4, "test_problems": 4, "samples": 2, "max_new_tokens": 24}.items()]
    offline = tmp_path / "offline-steps"
    cfg = compose_train([
        "experiment=steps", "data=offline-steps-outcome", "phase=transfer", *pretrain, *generate,
        f"paths.offline={offline}", f"paths.outputs={tmp_path / 'outputs'}", f"paths.cache={tmp_path / 'cache'}",
        f"paths.run_dir={tmp_path / 'outputs' / 'transfer' / 'run'}", "head=mlp", "logger=none", "progress_bar=none",
        "trainer.accelerator=cpu", "trainer.fast_dev_run=true", "data.batch_size=4",
    ])
    run.train(cfg)
    assert (offline / "backbone" / "model.safetensors").is_file()
    assert all((offline / "critic" / f"steps_{split}.jsonl").is_file() for split in ("train", "val", "test"))
    assert (tmp_path / "outputs" / "transfer" / "run" / "export").is_dir()
