"""data.schema=stepwise: TRL's stepwise-supervision rows, checked row by row and expanded to one pointwise row per step
prefix; a tiny critic trains on them through `python train.py` and reports the step AUROC."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from conftest import write_jsonl
from helpers import compose_train, tiny_overrides

from autocritic.data.datamodule import CriticDataModule, DataSettings, read_rows
from autocritic.data.stepwise import expand_steps
from autocritic.errors import ConfigError, DataError
from autocritic.model.backbone import load_tokenizer
from autocritic.training import run
from autocritic.training.config_check import check_config

ROW = {"prompt": "Q: 2+3*4=? A:", "completions": ["3*4=12", "2+12=15", "so 15"], "labels": [True, False, 1]}


def stepwise_rows(n: int, seed: int) -> list[dict]:
    """Two-step solutions whose step labels are learnable from the text: is each written sum right?"""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        right = [rng.random() < 0.5, rng.random() < 0.5]
        first = a + b if right[0] else a + b + 1
        second = first + c if right[1] else first + c + 2
        steps = [f"{a}+{b}={first}", f"{first}+{c}={second}"]
        rows.append({"prompt": f"Q: {a}+{b}+{c}=? A:", "completions": steps, "labels": [right[0], all(right)]})
    return rows


def test_a_row_expands_to_one_pointwise_row_per_step_prefix(tmp_path):
    path = write_jsonl(tmp_path / "steps.jsonl", [ROW])
    rows = read_rows(DataSettings(schema="stepwise", train_files=[str(path)], val_files=[str(path)]))
    assert rows["train"] == [
        {"prompt": ROW["prompt"], "response": "3*4=12\n", "label": 1.0, "step": 1},
        {"prompt": ROW["prompt"], "response": "3*4=12\n2+12=15\n", "label": 0.0, "step": 2},
        {"prompt": ROW["prompt"], "response": "3*4=12\n2+12=15\nso 15\n", "label": 1.0, "step": 3},
    ]
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"q": ROW["prompt"], "steps": ROW["completions"], "ok": ROW["labels"]}])
    columns = {"prompt": "q", "completions": "steps", "labels": "ok"}
    settings = DataSettings(schema="stepwise", train_files=[str(renamed)], val_files=[str(renamed)], columns=columns,
                            step_separator=" ; ")
    assert [r["response"] for r in read_rows(settings)["val"]] == ["3*4=12 ; ", "3*4=12 ; 2+12=15 ; ",
                                                                     "3*4=12 ; 2+12=15 ; so 15 ; "]


def test_the_steps_of_one_solution_stay_in_one_split(tmp_path):
    path = write_jsonl(tmp_path / "steps.jsonl", stepwise_rows(20, 0))
    rows = read_rows(DataSettings(schema="stepwise", train_files=[str(path)], val_fraction=0.25))
    solutions = {split: {(r["prompt"], r["response"].split("\n")[0]) for r in rs} for split, rs in rows.items()}
    assert len(rows["val"]) == 2 * 5 and len(rows["train"]) == 2 * 15
    assert not solutions["train"] & solutions["val"]


def test_the_datamodule_encodes_each_step_and_counts_them(tiny_backbone, tmp_path):
    path = write_jsonl(tmp_path / "steps.jsonl", [ROW, ROW | {"prompt": "Q: 1=? A:"}])
    tokenizer = load_tokenizer(str(tiny_backbone))
    dm = CriticDataModule(DataSettings(schema="stepwise", train_files=[str(path)], val_files=[str(path)]), tokenizer)
    dm.setup()
    items = dm.encoded["train"]
    assert items[1]["ids"][0] == tokenizer("Q: 2+3*4=? A:3*4=12\n2+12=15\n")["input_ids"]
    assert [it["target"] for it in items] == [1.0, 0.0, 1.0] * 2
    assert [it["group"] for it in items] == [0, 0, 0, 1, 1, 1]  # grouped by prompt: the steps of one solution
    assert (dm.stats["data/train_solutions"], dm.stats["data/train_steps"]) == (2, 6)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "labels": [True]}, r"row 2: missing column 'completions' \(schema stepwise"),
        ({"prompt": "p", "completions": ["a"]}, r"row 2: missing column 'labels'"),
        (ROW | {"labels": [True, False]}, r"row 2: 3 steps but 2 labels"),
        (ROW | {"completions": [], "labels": []}, r"row 2: column 'completions' has no steps"),
        (ROW | {"labels": [True, "yes", False]}, r"row 2: label 2 is 'yes': step labels are true/false"),
        (ROW | {"labels": [True, 0.5, False]}, r"row 2: label 2 is 0.5"),
        (ROW | {"completions": ["a", " ", "c"]}, r"row 2: step 2 is empty"),
        (ROW | {"completions": ["a", "b\nc", "d"]}, r"row 2: step 2 contains data.step_separator '\\n'"),
        (ROW | {"prompt": 7}, r"row 2: column 'prompt' must be text"),
        (ROW | {"completions": "3*4=12"}, r"row 2: column 'completions' must be a list"),
        (ROW | {"prompt": [{"role": "user", "content": "hi"}]}, r"row 2: a conversational stepwise row"),
    ],
)
def test_a_bad_row_is_named(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROW, row])
    with pytest.raises(DataError, match=r"bad.jsonl, " + message):
        read_rows(DataSettings(schema="stepwise", train_files=[str(path)]))


def test_an_empty_separator_is_refused():
    with pytest.raises(ConfigError, match="data.step_separator is empty"):
        DataSettings(schema="stepwise", step_separator="")


def test_expand_steps_is_the_prefix_rule():
    rows = expand_steps([{"prompt": "p", "completions": ["a", "b"], "labels": [False, True]}], "|")
    assert [(r["response"], r["label"], r["step"]) for r in rows] == [("a|", 0.0, 1), ("a|b|", 1.0, 2)]


# ---- through python train.py ----


@pytest.fixture(scope="module")
def step_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("step_data")
    return {split: write_jsonl(root / f"{split}.jsonl", stepwise_rows(n, seed))
            for split, n, seed in (("train", 24, 0), ("val", 12, 1), ("test", 12, 2))}


def stepwise_overrides(backbone: Path, files: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(backbone, files, root, "steps"), "data.schema=stepwise",
            f"data.test_files=[{files['test']}]", *extra]


@pytest.mark.parametrize("objective, metric", [("bce", "test/auroc"), ("mse", "test/pearson")])
def test_a_stepwise_file_trains_and_reports_the_step_metrics(tiny_backbone, step_files, tmp_path, caplog, objective, metric):
    caplog.set_level(logging.INFO, logger="autocritic")
    cfg = compose_train(stepwise_overrides(tiny_backbone, step_files, tmp_path, f"objective={objective}",
                                           "phase.max_epochs=1"))
    run.train(cfg)
    metrics = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())
    assert -1 <= metrics[metric] <= 1  # over the 24 test steps of 12 solutions
    assert "train 24 solutions → 48 steps, val 12 solutions → 24 steps, test 12 solutions → 24 steps" in caplog.text
    config = json.loads((Path(cfg.paths.run_dir) / "export" / "critic_config.json").read_text())
    assert config["data"]["schema"] == "stepwise"


def test_the_step_separator_keys_the_feature_cache(tiny_backbone, step_files, tmp_path):
    cache = tmp_path / "cache"
    for name, separator in (("a", "'\n'"), ("b", "' ; '"), ("c", "' ; '")):
        run.train(compose_train(stepwise_overrides(tiny_backbone, step_files, tmp_path, "trainer.fast_dev_run=true",
                                                   f"data.step_separator={separator}", f"paths.run_dir={tmp_path / name}")))
    assert len(list(cache.glob("*.safetensors"))) == 2  # " ; " makes other texts than "\n"; run c is a hit


def test_the_pairwise_objective_is_refused_for_steps(tiny_backbone, step_files, tmp_path):
    cfg = compose_train(stepwise_overrides(tiny_backbone, step_files, tmp_path, "objective=pairwise"))
    with pytest.raises(ConfigError, match="objective=pairwise needs pairs .* data.schema=stepwise .* objective=bce"):
        check_config(cfg)


# ---- python evaluate.py suites=[score] on a stepwise file ----


class LastStepChecked:
    """A critic that reads the last step of the prefix: +2 when its sum is right, -2 otherwise."""

    def __init__(self):
        self.responses: list[str] = []

    def score_texts(self, prompts, responses, batch_size=None):
        self.responses += responses
        out = []
        for response in responses:
            left, right = response.removesuffix("\n").split("\n")[-1].split("=")
            out.append(2.0 if sum(map(int, left.split("+"))) == int(right) else -2.0)
        return out


def step_labels_by_the_rule(row: dict) -> list[bool]:
    """Each step's own sum right (the critic above reads one step, so the file's labels are per step here)."""
    return [sum(map(int, s.split("=")[0].split("+"))) == int(s.split("=")[1]) for s in row["completions"]]


def test_the_score_suite_reads_a_stepwise_file_and_reports_the_step_auroc(tmp_path):
    from autocritic.evaluation import score
    from autocritic.evaluation.context import EvalContext

    rows = [r | {"labels": step_labels_by_the_rule(r), "id": i} for i, r in enumerate(stepwise_rows(12, 3))]
    path = write_jsonl(tmp_path / "steps.jsonl", rows)
    critic = LastStepChecked()
    result = score.run(EvalContext(critic, out_dir=tmp_path), score.Settings(files=(str(path),)))  # schema detected
    figures = result.figures["steps"]
    assert figures["schema"] == "stepwise" and (figures["rows"], figures["steps"]) == (12, 24)
    assert figures["auroc"] == pytest.approx(1.0) and figures["accuracy"] == 1.0
    assert critic.responses[:2] == [rows[0]["completions"][0] + "\n", "".join(s + "\n" for s in rows[0]["completions"])]
    written = [json.loads(line) for line in (tmp_path / "scores_steps.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == list(range(12))
    assert all(r["step_scores"] == [2.0 if good else -2.0 for good in r["labels"]] for r in written)
    assert len(written[0]["step_probabilities"]) == 2


def test_evaluate_py_scores_a_stepwise_file_with_an_export(tiny_export, tmp_path):
    from helpers import CONF_DIR
    from hydra import compose, initialize_config_dir

    from autocritic.evaluation.run import evaluate

    rows = [r | {"completions": [s.replace("=", "=\n") for s in r["completions"]]} for r in stepwise_rows(6, 4)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={tiny_export}", f"paths.run_dir={tmp_path / 'run'}", "suites=[score]",
                                             f"score.files=[{path}]", "score.schema=stepwise", "score.step_separator=' | '"])
    evaluate(cfg)
    written = [json.loads(line) for line in (tmp_path / "run" / "scores_mine.jsonl").read_text().splitlines()]
    assert [len(r["step_scores"]) for r in written] == [2] * 6  # steps holding a newline: not the separator here
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], rows[1] | {"labels": [True]}])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={tmp_path / 'never-loaded'}", "suites=[score]", f"score.files=[{bad}]",
                                             "score.schema=stepwise"])
    with pytest.raises(DataError, match=r"bad.jsonl, row 1: step 1 contains data.step_separator '\\n'"):
        evaluate(cfg)
