"""Pairwise training rows with pointwise validation and test rows (`data.train_schema=pairwise`): the offline
default's recipe trains Bradley–Terry on (right, wrong) answer pairs, keeps the epoch by the within-problem AUROC of
the pointwise validation answers and calibrates on them."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from helpers import compose_train, tiny_overrides

from autocritic.data.datamodule import DataSettings, read_rows
from autocritic.errors import ConfigError, DataError
from autocritic.training import run
from autocritic.training.config_check import check_config
from autocritic.training.module import CriticModule, OptimSettings
from autocritic.training.objectives import ObjectiveSettings, pointwise_bce

PAIRWISE = ("data.train_schema=pairwise", "objective.kind=pairwise", "objective.monitor=val/within_auroc")


def write_pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"Q: {a}+{b}=? A:", "chosen": f" {a + b}", "rejected": f" {wrong}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def pairs_data(tiny_data, tmp_path) -> dict[str, Path]:
    return tiny_data | {"train": write_pairs(tmp_path / "pairs.jsonl", 48, 0)}


def test_pairs_train_while_validation_and_test_are_pointwise_and_calibrated(
    tiny_backbone, pairs_data, tiny_data, tmp_path, caplog
):
    overrides = [*tiny_overrides(tiny_backbone, pairs_data, tmp_path), f"data.test_files=[{tiny_data['test']}]"]
    cfg = compose_train([*overrides, *PAIRWISE, "phase.max_epochs=2"])
    with caplog.at_level(logging.INFO, logger="autocritic"):
        run.train(cfg)
    metrics = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())
    assert {"test/within_auroc", "test/ece", "test/auroc"} <= set(metrics)  # pointwise test metrics
    assert "test/pairwise_accuracy" not in metrics
    assert "calibration on 32 validation rows" in caplog.text  # the 32 pointwise validation answers
    assert "on pairwise critic loss" in caplog.text
    assert (Path(cfg.paths.run_dir) / "export").is_dir()


def test_validation_rows_under_a_pairwise_objective_take_the_pointwise_loss(monkeypatch):
    objective = ObjectiveSettings(kind="pairwise", positive_weight=3.0)
    module = CriticModule(torch.nn.Linear(1, 1), objective, OptimSettings(), backbone_frozen=True, eval_kind="bce")
    scores, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    monkeypatch.setattr(module, "forward_batch", lambda batch, *args: (scores, scores[:, None], None))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    loss = module.step({"target": target, "group": torch.tensor([0, 0, 1])}, "val")
    assert torch.allclose(loss, pointwise_bce(scores[:, None], target[:, None], 3.0))
    assert module.kinds == {"train": "pairwise", "val": "bce", "test": "bce"}


def test_pointwise_rows_where_pairs_are_expected_name_the_setting(tiny_data):
    settings = DataSettings(
        train_files=[str(tiny_data["train"])], val_files=[str(tiny_data["val"])], train_schema="pairwise"
    )
    with pytest.raises(DataError, match="data.train_schema=pairwise"):
        read_rows(settings)


def test_pairwise_training_needs_pointwise_validation_rows(pairs_data):
    with pytest.raises(DataError, match="set data.val_files"):
        read_rows(DataSettings(train_files=[str(pairs_data["train"])], train_schema="pairwise"))


@pytest.mark.parametrize(("train_schema", "schema"), [("scalar", "pointwise"), ("pairwise", "scalar")])
def test_other_schema_mixes_are_refused(train_schema, schema):
    with pytest.raises(ConfigError, match="data.train_schema"):
        DataSettings(schema=schema, train_schema=train_schema)


def test_pairs_need_a_pairwise_objective(tiny_backbone, pairs_data, tmp_path):
    cfg = compose_train([*tiny_overrides(tiny_backbone, pairs_data, tmp_path), "data.train_schema=pairwise"])
    with pytest.raises(ConfigError, match="objective.kind=pairwise"):
        check_config(cfg)


def test_the_offline_recipes_rank_pairs_and_keep_the_epoch_on_the_pointwise_answers():
    transfer = compose_train(["phase=transfer"])
    assert list(transfer.data.train_files) == ["data/offline/critic/pairs_train.jsonl"]
    assert list(transfer.data.val_files) == ["data/offline/critic/val.jsonl"]
    assert (transfer.data.train_schema, transfer.data.schema, transfer.objective.kind) == ("pairwise", "pointwise", "pairwise")
    assert transfer.objective.monitor == "val/within_auroc" and transfer.objective.calibrate
    finetune = compose_train(["phase=finetune"])
    assert (finetune.data.train_schema, finetune.data.schema, finetune.objective.kind) == ("pairwise", "pointwise", "pairwise")
    assert list(finetune.data.train_files) == list(transfer.data.train_files)
    assert finetune.objective.monitor == "val/within_auroc" and finetune.objective.calibrate


def test_the_improve_refresh_trains_on_its_pointwise_answers(tmp_path):
    from autocritic.improve.critic import compose_train_config, transfer_overrides

    cfg = compose_train_config(
        transfer_overrides(tmp_path, tmp_path, tmp_path / "run", tmp_path / "train.jsonl", tmp_path / "val.jsonl", [])
    )
    assert (cfg.data.train_schema, cfg.objective.kind) == (None, "bce")
    assert list(cfg.data.train_files) == [str(tmp_path / "train.jsonl")]
