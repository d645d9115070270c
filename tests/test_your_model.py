"""Training on your own model and files with no knowledge of the offline world: no `model.offline_default`, no
`checkpoint.save_top_k=0`; `phase.init_from=scratch` is the one word for a finetune without a transfer export."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from helpers import compose_train, tiny_overrides

from autocritic.errors import CheckpointError
from autocritic.model.export import read_critic_config
from autocritic.training import run


def your_overrides(backbone: Path, data: dict, root: Path, name: str) -> list[str]:
    """What a user types for their own model and files: no flag about the offline world."""
    overrides = [o for o in tiny_overrides(backbone, data, root, name) if not o.startswith("model.offline_default")]
    return [*overrides, f"paths.offline={root / 'offline'}"]


@pytest.fixture
def offline_forbidden(monkeypatch):
    """Any step of the offline build fails the test."""
    from autocritic.offline import pipeline

    for name in ("ensure_backbone", "ensure_critic_data", "ensure_replay_documents", "run_offline_phase"):
        monkeypatch.setattr(pipeline, name, lambda *a, _name=name, **k: pytest.fail(f"offline {_name} was called"))


def pairwise_files(root: Path, data: dict) -> dict[str, Path]:
    """The tiny arithmetic rows as pairs: the right sum chosen over a wrong one."""
    import json

    out = {}
    for split in ("train", "val"):
        rows = [json.loads(line) for line in Path(data[split]).read_text().splitlines()]
        pairs = []
        for row in rows:
            a, b = (int(x) for x in row["prompt"].removeprefix("Q: ").removesuffix("=? A:").split("+"))
            pairs.append({"prompt": row["prompt"], "chosen": f" {a + b}", "rejected": f" {a + b + 1}"})
        out[split] = write_jsonl(root / f"pairs_{split}.jsonl", pairs)
    return out


@pytest.mark.parametrize("schema", ["pointwise", "pairwise"])
def test_transfer_then_finetune_on_your_model_never_touches_the_offline_world(
    tiny_backbone, tiny_data, tmp_path, offline_forbidden, caplog, schema
):
    data = tiny_data if schema == "pointwise" else pairwise_files(tmp_path, tiny_data)
    extra = [] if schema == "pointwise" else ["data.schema=pairwise", "objective=pairwise"]
    caplog.set_level(logging.INFO, logger="autocritic")
    transfer = compose_train([*your_overrides(tiny_backbone, data, tmp_path, "t"), *extra, "phase.max_epochs=1"])
    assert transfer.model.offline_default  # the model group's default, left alone by the user
    run.train(transfer)
    finetune = compose_train(
        [*your_overrides(tiny_backbone, data, tmp_path, "f"), *extra, "phase=finetune", "phase.max_epochs=1"]
    )
    run.train(finetune)
    export = tmp_path / "outputs" / "finetune" / "f" / "export"
    config = read_critic_config(export)
    assert config["started_from"] == str(tmp_path / "outputs" / "transfer" / "t" / "export")
    assert config["backbone"]["mode"] == "lora"
    assert not (tmp_path / "offline").exists()
    assert "1 × LM loss on right/chosen responses" in caplog.text  # phase=finetune says it adds the LM loss


def test_finetune_from_scratch_is_one_word(tiny_backbone, tiny_data, tmp_path, offline_forbidden, caplog):
    overrides = [*your_overrides(tiny_backbone, tiny_data, tmp_path, "f"), "phase=finetune", "trainer.fast_dev_run=true"]
    with pytest.raises(CheckpointError, match=r"Add phase\.init_from=scratch"):
        run.train(compose_train(overrides))
    caplog.set_level(logging.INFO, logger="autocritic")
    run.train(compose_train([*overrides, "phase.init_from=scratch"]))
    assert read_critic_config(tmp_path / "outputs" / "finetune" / "f" / "export")["started_from"] is None
    assert "starts from a new head (phase.init_from=scratch)" in caplog.text


def one_class_val(tmp_path: Path, data: dict) -> dict:
    rows = Path(data["val"]).read_text().replace('"label": 0', '"label": 1')
    path = tmp_path / "val_all_right.jsonl"
    path.write_text(rows)
    return {"train": data["train"], "val": path}


def test_a_validation_split_of_one_class_picks_the_best_epoch_by_loss(tiny_backbone, tiny_data, tmp_path, caplog):
    """AUROC over one class is the same every epoch: the first epoch would be exported however training went on."""
    caplog.set_level(logging.INFO, logger="autocritic")
    cfg = compose_train([*your_overrides(tiny_backbone, one_class_val(tmp_path, tiny_data), tmp_path, "r"), "phase.max_epochs=3"])
    run.train(cfg)
    assert "the best epoch is chosen by val/loss" in caplog.text
    assert "exports the best epoch by val/loss (min)" in caplog.text
    checkpoint = torch.load(tmp_path / "outputs" / "transfer" / "r" / "checkpoints" / "best.ckpt", weights_only=False)
    assert [v["monitor"] for v in checkpoint["callbacks"].values() if v.get("monitor")] == ["val/loss"]


def test_checkpoint_export_last_exports_the_last_epoch(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    handed = {}
    save = run.save_critic

    def spy(model, *args, **kwargs):
        handed["model"] = model
        return save(model, *args, **kwargs)

    monkeypatch.setattr(run, "save_critic", spy)
    cfg = compose_train(
        [*your_overrides(tiny_backbone, tiny_data, tmp_path, "l"), "phase.max_epochs=3", "checkpoint.export=last",
         "objective.calibrate=false"]
    )
    run.train(cfg)
    last = torch.load(tmp_path / "outputs" / "transfer" / "l" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2
    saved = {k.removeprefix("critic."): v for k, v in last["state_dict"].items()}  # what it keeps: the head, lm_head
    assert any(k.startswith("head.") for k in saved)
    trained = handed["model"].state_dict()
    for key, value in saved.items():
        assert torch.equal(trained[key], value), key


def test_a_template_with_colons_braces_and_newlines_reaches_the_export(tiny_backbone, tiny_data, tmp_path):
    # On the command line: 'data.template="Q: {prompt}: {response}"' (the shell passes the double quotes to Hydra).
    quoted = compose_train(["data=files", 'data.template="Q: {prompt}: {response}"'])
    assert quoted.data.template == "Q: {prompt}: {response}"
    # A newline needs the shell to write one ($'...' in bash), or a file:
    newline = compose_train(["data=files", 'data.template="Q: {prompt}\nA: {response}"'])
    assert newline.data.template == "Q: {prompt}\nA: {response}"
    template = tmp_path / "template.txt"
    template.write_text("Q: {prompt}\nA: {response}\n")
    overrides = [o for o in your_overrides(tiny_backbone, tiny_data, tmp_path, "t") if not o.startswith("data.template")]
    run.train(compose_train([*overrides, f"data.template_file={template}", "trainer.fast_dev_run=true"]))
    assert read_critic_config(tmp_path / "outputs" / "transfer" / "t" / "export")["template"] == "Q: {prompt}\nA: {response}"


def test_a_template_with_a_typed_backslash_n_is_warned_about(caplog):
    # What bash passes for 'data.template="Q: {prompt}\nA: {response}"': a backslash and an n.
    cfg = compose_train(["data=files", 'data.template="Q: {prompt}\\nA: {response}"'])
    assert cfg.data.template == "Q: {prompt}\\nA: {response}"
    caplog.set_level(logging.WARNING, logger="autocritic")
    run.use_template_file(cfg)
    assert "pass data.template_file=<file>" in caplog.text


def test_a_bad_template_file_is_a_clear_error(tmp_path):
    from autocritic.errors import ConfigError

    bad = tmp_path / "t.txt"
    bad.write_text("{response} then {prompt}")
    for path, message in ((tmp_path / "missing.txt", "is not a file"), (bad, "must contain {prompt} and end with")):
        with pytest.raises(ConfigError, match=message):
            run.train(compose_train(["data=files", f"data.template_file={path}"]))
