"""Self-labelling on your own problems: sample K answers per problem, label each by checking it, split by problem.
A scripted sampler pins the labelling; the tiny Falcon runs the whole `python train.py phase=generate` path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import write_jsonl
from helpers import compose_train

from autocritic.data.datamodule import DataSettings, read_rows
from autocritic.errors import ConfigError, DataError
from autocritic.labelling.build import build_labelled_data
from autocritic.labelling.checkers import exact, last_number, load_checker, numeric
from autocritic.labelling.problems import Problem, read_problems, split_by_problem
from autocritic.training import run

# ---- checkers ----


def test_exact_and_numeric_checkers():
    assert exact("q", " Paris ", "Paris\n") and not exact("q", "Paris", "paris")
    assert numeric("q", "1,234", "so the total is 1234.0") and numeric("q", "x #### 42", "I think 41, no: 42")
    assert not numeric("q", "42", "42 apples, 43 pears")  # the last number counts
    assert not numeric("q", "42", "forty-two")  # no number: wrong
    assert numeric("q", "0.3", "0.30000001", tolerance=1e-6) and not numeric("q", "0.3", "0.31", tolerance=1e-6)
    assert last_number("-2.5e3 is it") == -2500.0


def test_a_checker_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mychecks.py").write_text(
        "def is_right(question, answer, response):\n    return response.strip().lower() == answer.lower()\n"
        "def two_args(answer, response):\n    return True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_checker("mychecks:is_right")("q", "Yes", " yes ")
    for spec, message in [
        ("mychecks.is_right", "use exact, numeric, or a function as module:function"),
        ("nopkg_here:check", "module 'nopkg_here' cannot be imported"),
        ("mychecks:missing", "mychecks has no function 'missing'"),
        ("mychecks:two_args", "must take \\(question, answer, response\\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_checker(spec)


# ---- problems, splits, labels ----


def problems_file(tmp_path: Path, n: int = 10, repeat: int = 0) -> Path:
    rows = [{"question": f"{i}+{i}", "answer": 2 * i} for i in range(n)]  # a JSON number as the answer
    return write_jsonl(tmp_path / "problems.jsonl", rows + rows[:repeat])


def test_splits_are_by_problem(tmp_path):
    problems = read_problems(str(problems_file(tmp_path, 20, repeat=5)), {})
    splits = split_by_problem(problems, 0.2, 0.1, seed=3)
    questions = {split: {p.question for p in ps} for split, ps in splits.items()}
    assert not questions["train"] & questions["val"] and not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert sum(map(len, splits.values())) == 25 and (len(questions["val"]), len(questions["test"])) == (4, 2)
    assert split_by_problem(problems, 0.2, 0.1, seed=3) == splits  # seeded


def test_labels_are_exactly_the_checkers_verdicts(tmp_path):
    splits = split_by_problem(read_problems(str(problems_file(tmp_path)), {}), 0.2, 0.2, seed=0)
    sampled = []

    def sample(prompts):
        sampled.extend(prompts)
        # right, wrong, a repeat, an empty answer, and one the checker cannot judge
        return [[f" {int(p.split('+')[0].split()[-1]) * 2}", " 7", " 7", " ", "??"] for p in prompts]

    def checker(question, answer, response):
        return None if response == "??" else numeric(question, answer, response)

    card = build_labelled_data(splits, sample, checker, "Q: {prompt}\nA:{response}", tmp_path / "out")
    assert sampled[0].startswith("Q: ") and sampled[0].endswith("\nA:")
    by_question = {p.question: p for ps in splits.values() for p in ps}
    for split, problems in splits.items():
        rows = [json.loads(line) for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
        assert {r["prompt"] for r in rows} == {p.question for p in problems}
        assert all(r["label"] == int(numeric(r["prompt"], by_question[r["prompt"]].answer, r["response"])) for r in rows)
        assert len(rows) == 2 * len(problems)  # right + wrong; the repeat, the empty and the unjudged dropped
        assert card["splits"][split] | {"problems": len(problems)} == card["splits"][split]
        assert (card["splits"][split]["repeated"], card["splits"][split]["unjudged"]) == (len(problems),) * 2
    rows = read_rows(DataSettings(train_files=[str(tmp_path / "out" / "train.jsonl")]))  # as training reads it
    assert rows["train"] and set(rows["train"][0]) == {"prompt", "response", "label"}
    assert (tmp_path / "out" / "template.txt").read_text() == "Q: {prompt}\nA:{response}"
    assert not list(tmp_path.glob("*.partial"))


def test_bad_problems_are_named(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"question": "a", "answer": "1"}, {"q": "b", "answer": "2"}])
    with pytest.raises(DataError, match=r"p.jsonl, row 2: missing column 'question'.*generate.columns.question"):
        read_problems(str(tmp_path / "p.jsonl"), {})
    with pytest.raises(DataError, match="too few"):
        split_by_problem([Problem("a", "1"), Problem("b", "2")], 0.1, 0.1, seed=0)


# ---- python train.py phase=generate generate.problems=... ----


def generate_overrides(backbone: Path, problems: Path, root: Path, *extra: str) -> list[str]:
    return [
        "phase=generate",
        "data=files",
        f"model.name_or_path={backbone}",
        f"generate.problems={problems}",
        "generate.samples=3",
        "generate.max_new_tokens=4",
        "generate.val_fraction=0.2",
        "generate.test_fraction=0.2",
        "logger=none",
        "progress_bar=none",
        f"paths.outputs={root / 'outputs'}",
        f"paths.offline={root / 'offline'}",
        f"paths.run_dir={root / 'outputs' / 'generate' / 'g'}",
        *extra,
    ]


@pytest.fixture
def offline_forbidden(monkeypatch):
    from autocritic.offline import pipeline

    for name in ("ensure_backbone", "ensure_critic_data", "run_offline_phase"):
        monkeypatch.setattr(pipeline, name, lambda *a, _name=name, **k: pytest.fail(f"offline {_name} was called"))


def test_train_py_labels_your_problems_with_your_model(tiny_backbone, tmp_path, offline_forbidden, capsys):
    problems = problems_file(tmp_path)
    run.train(compose_train(generate_overrides(tiny_backbone, problems, tmp_path, "generate.checker=exact")))
    out = tmp_path / "outputs" / "generate" / "g" / "labelled"
    answers = {r["question"]: str(r["answer"]) for r in map(json.loads, problems.read_text().splitlines())}
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for row in map(json.loads, (out / f"{split}.jsonl").read_text().splitlines()):
            assert row["label"] == int(exact(row["prompt"], answers[row["prompt"]], row["response"]))
            assert seen.setdefault(row["prompt"], split) == split  # no problem in two splits
    card = json.loads((out / "card.json").read_text())
    assert sum(s["sampled"] for s in card["splits"].values()) == 10 * 3
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"data.template_file={out / 'template.txt'}" in command
    # The printed command trains on it (here its transfer in one step).
    overrides = [a for a in command.split()[2:]] + [
        "trainer.fast_dev_run=true", "head=mlp", "logger=none", "progress_bar=none", "data.val_fraction=0.5",
        f"paths.outputs={tmp_path / 'outputs'}", f"paths.cache={tmp_path / 'cache'}",
        f"paths.run_dir={tmp_path / 'outputs' / 'transfer' / 't'}",
    ]
    run.train(compose_train(overrides))
    assert (tmp_path / "outputs" / "transfer" / "t" / "export").is_dir()


def test_a_bad_checker_fails_before_any_model_loads(tmp_path, offline_forbidden, monkeypatch, caplog):
    from autocritic.labelling import run as labelling_run

    monkeypatch.setattr(labelling_run, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    caplog.set_level(logging.INFO)
    problems = problems_file(tmp_path)
    default_model = [o for o in generate_overrides(Path("unused"), problems, tmp_path) if not o.startswith("model.")]
    with pytest.raises(ConfigError, match="module 'no_such_pkg.checks' cannot be imported"):
        run.train(compose_train([*default_model, "generate.checker=no_such_pkg.checks:right"]))
    write_jsonl(tmp_path / "words.jsonl", [{"question": "capital of France", "answer": "Paris"}] * 5)
    with pytest.raises(DataError, match="has no number for generate.checker=numeric"):
        run.train(compose_train([*default_model, f"generate.problems={tmp_path / 'words.jsonl'}"]))
    assert not (tmp_path / "offline").exists()


@pytest.mark.parametrize("phase", ["generate", "pretrain"])
def test_the_build_phases_pass_the_config_check(phase):
    """They build no Trainer: trainer.max_epochs (${phase.max_epochs}) is not theirs to resolve."""
    from autocritic.training.config_check import check_config

    check_config(compose_train([f"phase={phase}"]))
