"""Math-Shepherd step labels: a scripted tree of continuations gives known labels; the labelling phase writes them in
the stepwise schema beside the pointwise files, and the tiny Falcon runs the whole `phase=generate` path."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl
from helpers import compose_train
from test_labelling import generate_overrides, offline_forbidden, problems_file  # noqa: F401 (a fixture)

from autocritic.data.datamodule import DataSettings, read_rows
from autocritic.labelling.build import StepLabelling, build_labelled_data
from autocritic.labelling.checkers import exact, numeric
from autocritic.labelling.problems import read_problems, split_by_problem
from autocritic.labelling.steps import (
    Solution,
    bad_step_agreement,
    shepherd_labels,
    shepherd_labels_batch,
    split_steps,
)
from autocritic.training import run

# From each prefix, the continuations a scripted sampler returns (K = 3). The answer is 10.
TREE = {
    "Q:a=4\n": [" b=6 so 10", " b=5 so 9", " so 11"],  # one of three reaches 10
    "Q:a=4\nb=5\n": [" so 9", " so 9", " so 8"],  # none does
    "Q:a=4\nb=5\nc=1\n": [" so 10", " so 10", " so 10"],  # all do
}
STEPS = ["a=4", "b=5", "c=1", "so 10"]


def scripted(calls: list):
    def complete(prompts):
        calls.append(list(prompts))
        return [TREE[p] for p in prompts]

    return complete


def test_a_known_tree_of_continuations_gives_known_labels():
    calls = []
    hard = shepherd_labels("Q:", STEPS, "10", scripted(calls), numeric, k=3)
    assert hard == [True, False, True, True]  # the final step: the checker on the whole solution
    assert calls == [["Q:a=4\n", "Q:a=4\nb=5\n", "Q:a=4\nb=5\nc=1\n"]]  # one batched call, no final prefix
    soft = shepherd_labels("Q:", STEPS, "10", scripted([]), numeric, k=3, soft=True)
    assert soft == [pytest.approx(1 / 3), 0.0, 1.0, 1.0]
    wrong_end = shepherd_labels("Q:", [*STEPS[:3], "so 9"], "10", scripted([]), numeric, k=3)
    assert wrong_end == [True, False, True, False]


def test_many_solutions_share_one_call_and_the_checker_sees_the_question():
    calls, seen = [], []

    def checker(question, answer, response):
        seen.append(question)
        return None if "11" in response else numeric(question, answer, response)  # unjudged: not right

    solutions = [
        Solution("question one", tuple(STEPS), "10", context="Q:"),
        Solution("question two", ("a=4",), "4", context="Q:"),  # one step: no continuation needed
        Solution("question three", ("a=4", "so 11"), "11", context="Q:"),
    ]
    labels = shepherd_labels_batch(solutions, scripted(calls), checker, k=3)
    assert labels == [[True, False, True, True], [True], [False, False]]  # "11" is unjudged: never right
    assert len(calls) == 1 and len(calls[0]) == 3 + 0 + 1
    assert set(seen) == {"question one", "question two", "question three"}


def test_bad_inputs_to_the_labeller():
    with pytest.raises(ValueError, match="must return 3 continuations"):
        shepherd_labels("Q:", STEPS, "10", lambda prompts: [["x"]] * len(prompts), numeric, k=3)
    with pytest.raises(ValueError, match="contains the separator"):
        shepherd_labels("Q:", ["a\nb"], "10", scripted([]), numeric, k=3)
    with pytest.raises(ValueError, match="has no steps"):
        shepherd_labels("Q:", [], "10", scripted([]), numeric, k=3)


def test_split_steps_drops_blank_pieces():
    assert split_steps("a=4\n\nb=5\n  \nso 9") == ["a=4", "b=5", "so 9"]
    assert split_steps("a; b;", "; ") == ["a", "b;"]


def test_agreement_of_two_label_lists():
    exact_labels = [[True, False, False], [True, True], [False, True]]
    estimated = [[True, True, False], [True, False], [False, False]]
    agreement = bad_step_agreement(estimated, exact_labels)
    # bad steps (exact): 3; flagged bad (estimated): 4; caught: 2
    assert (agreement["bad"], agreement["flagged"], agreement["caught"]) == (3, 4, 2)
    assert agreement["precision"] == pytest.approx(2 / 4) and agreement["recall"] == pytest.approx(2 / 3)
    assert agreement["accuracy"] == pytest.approx(4 / 7)
    assert agreement["first_bad_step_agreement"] == pytest.approx(1 / 3)  # the first bad step: 2 vs 1, none vs 1, 0 vs 0
    flat = bad_step_agreement([0.0, 0.25, 1.0], [False, True, True])  # soft estimates: bad below 0.5
    assert (flat["precision"], flat["recall"]) == (0.5, 1.0) and "first_bad_step_agreement" not in flat
    assert bad_step_agreement([True], [True])["precision"] is None  # nothing flagged
    with pytest.raises(ValueError, match="different lengths"):
        bad_step_agreement([[True]], [[True, False]])


def test_labelling_writes_the_steps_beside_the_pointwise_rows(tmp_path):
    splits = split_by_problem(read_problems(str(problems_file(tmp_path)), {}), 0.2, 0.2, seed=0)

    def sample(prompts):  # a right two-step answer, a wrong one, and an answer of blank lines only
        return [[f"{q}\n\n= {2 * int(q)}", f"{q}\n= 7", "\n \n"] for q in (p.split(":")[1].split("+")[0] for p in prompts)]

    calls = []

    def complete(prompts):  # from the first step, one of two continuations reaches the answer
        calls.extend(prompts)
        return [[f"= {2 * int(p.split(':')[1].split('+')[0])}", "= 1"] for p in prompts]

    template = "Q:{prompt}\nA:{response}"
    build_labelled_data(splits, sample, numeric, template, tmp_path / "out", steps=StepLabelling(complete, 2))
    assert calls and all(c.startswith("Q:") and "\nA:" in c and c.endswith("\n") for c in calls)
    for split, problems in splits.items():
        pointwise = [json.loads(line) for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
        steps = [json.loads(line) for line in (tmp_path / "out" / f"steps_{split}.jsonl").read_text().splitlines()]
        assert len(pointwise) == len(steps) == 2 * len(problems)  # the blank answer dropped from both
        for point, step in zip(pointwise, steps, strict=True):
            assert step["prompt"] == point["prompt"] and len(step["completions"]) == 2
            assert step["labels"] == [True, bool(point["label"])] and step["soft_labels"][0] == 0.5
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["steps"]["train"]["steps"] == 2 * card["steps"]["train"]["solutions"]
    rows = read_rows(DataSettings(schema="stepwise", train_files=[str(tmp_path / "out" / "steps_train.jsonl")]))
    assert rows["train"][0]["response"].count("\n") in (1, 2)  # as training reads it: one row per step


def test_train_py_labels_the_steps_with_your_model(tiny_backbone, tmp_path, offline_forbidden, capsys):  # noqa: F811
    write_jsonl(tmp_path / "problems.jsonl", [{"question": f"{i}+{i}", "answer": f"{2 * i}"} for i in range(10)])
    overrides = generate_overrides(tiny_backbone, tmp_path / "problems.jsonl", tmp_path, "generate.checker=exact",
                                   "generate.step_labels=shepherd", "generate.completions=2",
                                   "generate.step_separator=a", "generate.max_new_tokens=12")
    run.train(compose_train(overrides))
    out = tmp_path / "outputs" / "generate" / "g" / "labelled"
    answers = {f"{i}+{i}": f"{2 * i}" for i in range(10)}
    total = 0
    for split in ("train", "val", "test"):
        pointwise = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        steps = [json.loads(line) for line in (out / f"steps_{split}.jsonl").read_text().splitlines()]
        assert [s["prompt"] for s in steps] == [p["prompt"] for p in pointwise]
        for step in steps:
            whole = "".join(s + "a" for s in step["completions"])
            assert step["labels"][-1] == exact(step["prompt"], answers[step["prompt"]], whole)
            assert all(s and "a" not in s for s in step["completions"])
            total += len(step["completions"])
        settings = DataSettings(schema="stepwise", step_separator="a", train_files=[str(out / f"steps_{split}.jsonl")])
        if steps:
            assert len(read_rows(settings)["train"]) + len(read_rows(settings)["val"]) == sum(
                len(s["completions"]) for s in steps
            )
    card = json.loads((out / "card.json").read_text())
    assert sum(s["steps"] for s in card["steps"].values()) == total > 0
    printed = capsys.readouterr().out
    assert "data.schema=stepwise 'data.step_separator=a'" in printed and f"{out / 'steps_train.jsonl'}" in printed


@pytest.mark.parametrize(
    "override, message",
    [("generate.step_labels=prm", r"step_labels='prm' is unknown: use one of \['none', 'shepherd'\]"),
     ("generate.completions=0", "completions, max_new_tokens and batch_size must be positive"),
     ("generate.step_separator=''", "step_separator is empty")],
)
def test_bad_step_settings_fail_before_any_model_loads(tmp_path, offline_forbidden, monkeypatch, override, message):  # noqa: F811
    from autocritic.errors import ConfigError
    from autocritic.labelling import run as labelling_run

    monkeypatch.setattr(labelling_run, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    overrides = generate_overrides(tmp_path / "unused", problems_file(tmp_path), tmp_path, override)
    with pytest.raises(ConfigError, match=message):
        run.train(compose_train(overrides))
