"""`python evaluate.py suites=[score] score.files=[...]`: your own files scored by an export, with the metrics of
each file's schema; rows read and checked by the code training uses."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import arithmetic_rows, write_jsonl
from helpers import CONF_DIR, compose_train, tiny_overrides
from hydra import compose, initialize_config_dir

from autocritic.errors import ConfigError, DataError
from autocritic.evaluation import score
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import auroc, sigmoid
from autocritic.evaluation.run import evaluate
from autocritic.inference.generation import CriticGenerator


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("evaluate", overrides=overrides)


@pytest.fixture(scope="module")
def export(tiny_backbone, tiny_data, tmp_path_factory) -> Path:
    """A real export whose template is not the identity: scoring must render it."""
    from autocritic.training import run

    root = tmp_path_factory.mktemp("score_export")
    overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, root, "t") if not o.startswith("data.template")]
    cfg = compose_train([*overrides, "data.template='Q {prompt}:{response}'", "trainer.fast_dev_run=true"])
    run.train(cfg)
    return root / "outputs" / "transfer" / "t" / "export"


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Q: {i}+1=? A:", "chosen": f" {i + 1}", "rejected": f" {i + 2}", "id": i} for i in range(n)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_suite_scores_each_file_with_the_export(export, tmp_path):
    pointwise = write_jsonl(tmp_path / "answers.jsonl", [r | {"id": i} for i, r in enumerate(arithmetic_rows(20, 3))])
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:  # CSV cells are text, as training reads them
        writer = csv.DictWriter(handle, ["prompt", "chosen", "rejected", "id"])
        writer.writeheader()
        writer.writerows(pairs(6))
    scalar = write_jsonl(tmp_path / "graded.jsonl", [{"prompt": r["prompt"], "response": r["response"], "score": i / 7}
                                                      for i, r in enumerate(arithmetic_rows(8, 4))])
    run_dir = tmp_path / "run"
    cfg = compose_eval([f"ckpt={export}", f"paths.run_dir={run_dir}", "suites=[score]",
                        f"score.files=[{pointwise},{tmp_path / 'pairs.csv'},{scalar}]"])
    evaluate(cfg)
    figures = json.loads((run_dir / "results.json").read_text())["suites"]["score"]["figures"]
    assert {k: figures[k]["schema"] for k in figures} == {"answers": "pointwise", "pairs": "pairwise", "graded": "scalar"}

    generator = CriticGenerator.from_export(export)
    assert generator.template.text == "Q {prompt}:{response}"
    rows = read_jsonl(run_dir / "scores_answers.jsonl")
    source = [json.loads(line) for line in pointwise.read_text().splitlines()]
    assert [{k: r[k] for k in ("prompt", "response", "label", "id")} for r in rows] == source  # the row's fields
    expected = generator.score_texts([r["prompt"] for r in source], [r["response"] for r in source])
    assert [r["score"] for r in rows] == pytest.approx(expected, abs=1e-5)
    assert all(r["probability"] == pytest.approx(sigmoid(r["score"])) for r in rows)
    labels = [bool(r["label"]) for r in source]
    answers = figures["answers"]
    assert answers["auroc"] == pytest.approx(auroc(expected, labels), abs=1e-4)
    assert answers["accuracy"] == sum((sigmoid(s) >= 0.5) == y for s, y in zip(expected, labels, strict=True)) / 20
    assert 0 <= answers["ece"] <= 1

    paired = read_jsonl(run_dir / "scores_pairs.jsonl")
    chosen = generator.score_texts([p["prompt"] for p in pairs(6)], [p["chosen"] for p in pairs(6)])
    assert [r["chosen_score"] for r in paired] == pytest.approx(chosen, abs=1e-5)
    assert [r["id"] for r in paired] == [str(i) for i in range(6)]
    margins = [r["chosen_score"] - r["rejected_score"] for r in paired]
    assert figures["pairs"]["pairwise_accuracy"] == sum(m > 0 for m in margins) / 6

    graded = read_jsonl(run_dir / "scores_graded.jsonl")
    assert [r["input_score"] for r in graded] == [i / 7 for i in range(8)]  # the file's own score is kept
    assert -1 <= figures["graded"]["spearman"] <= 1 and -1 <= figures["graded"]["pearson"] <= 1

    report = (run_dir / "report.md").read_text()
    for png in ("score_roc_answers.png", "score_reliability_answers.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in report
    assert "### Scores of your files" in report


class KnownScores:
    """A critic whose score is known: +2 when the written sum is right, -2 otherwise, plus the prompt's number/10."""

    def score_texts(self, prompts, responses, batch_size=None):
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            a, b = (int(x) for x in prompt.removeprefix("Q: ").removesuffix("=? A:").split("+"))
            out.append((2.0 if int(response) == a + b else -2.0) + a / 10)
        return out


def test_metrics_of_a_critic_whose_scores_are_known(tmp_path):
    rows = arithmetic_rows(40, 5)
    files = [
        write_jsonl(tmp_path / "p.jsonl", rows),
        write_jsonl(tmp_path / "s.jsonl", [{"prompt": r["prompt"], "response": r["response"], "score": 4 * r["label"]
                                             + int(r["prompt"][3]) / 10} for r in rows]),
        write_jsonl(tmp_path / "w.jsonl", pairs(5) + [{"prompt": "Q: 3+1=? A:", "chosen": " 9", "rejected": " 4"}]),
    ]
    result = score.run(EvalContext(KnownScores(), out_dir=tmp_path), score.Settings(files=tuple(map(str, files))))
    p, s, w = (result.figures[k] for k in ("p", "s", "w"))
    assert p["auroc"] == pytest.approx(1.0) and p["accuracy"] == 1.0
    assert s["spearman"] == pytest.approx(1.0) and s["pearson"] == pytest.approx(1.0)
    assert w["pairwise_accuracy"] == pytest.approx(5 / 6)
    assert result.headline["p auroc"] == p["auroc"]
    written = read_jsonl(tmp_path / "scores_w.jsonl")
    assert written[-1]["probability"] == pytest.approx(sigmoid(-2 - 2)) and not math.isnan(w["mean_margin"])


def test_columns_map_and_the_schema_is_detected(tmp_path):
    rows = [{"question": r["prompt"], "answer": r["response"], "ok": bool(r["label"])} for r in arithmetic_rows(10, 6)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    settings = score.Settings(files=(str(path),), columns={"prompt": "question", "response": "answer", "label": "ok"})
    result = score.run(EvalContext(KnownScores(), out_dir=None), settings)
    assert result.figures["mine"]["schema"] == "pointwise" and result.figures["mine"]["auroc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "response": "b", "label": 1}\n{"prompt": "a", "response": "b", "label": 7}\n',
         r"bad.jsonl, row 2: label 7"),
        ('{"prompt": "a", "response": "b", "label": 1}\nnot json\n', r"bad.jsonl, line 2: not valid JSON"),
        ('{"question": "a", "reply": "b"}\n', r"row 1: its columns \['question', 'reply'\] fit no schema \(pointwise: \['prompt', 'response', 'label'\]"),
    ],
)
def test_a_bad_file_fails_before_the_model_loads(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    cfg = compose_eval([f"ckpt={tmp_path / 'never-loaded'}", "suites=[score]", f"score.files=[{tmp_path / 'bad.jsonl'}]"])
    with pytest.raises(DataError, match=message):
        evaluate(cfg)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ([], ConfigError, r"score.files is empty"),
        (["score.files=[/nope.jsonl]"], DataError, r"/nope.jsonl does not exist"),
        (["score.files=[x.jsonl]", "score.schema=chat"], ConfigError, r"schema='chat' is unknown"),
    ],
)
def test_bad_score_settings_fail_before_the_model_loads(tmp_path, overrides, error, message):
    cfg = compose_eval([f"ckpt={tmp_path / 'never-loaded'}", "suites=[score]", *overrides])
    with pytest.raises(error, match=message):
        evaluate(cfg)


def test_a_conversation_is_refused_by_an_export_that_wraps_prompts_in_a_template(export, tmp_path):
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": messages, "label": 1}])
    cfg = compose_eval([f"ckpt={export}", f"paths.run_dir={tmp_path / 'run'}", "suites=[score]", f"score.files=[{chats}]"])
    with pytest.raises(DataError, match=r"chats.jsonl, row 1 is a conversation, but this export wraps every prompt"):
        evaluate(cfg)
