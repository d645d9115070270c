"""Bad input reaches no compute, every stop says what happened, damaged files give one-line errors, a model that did
not learn is not exported as one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import compose_train, tiny_overrides

from autocritic.entry import task
from autocritic.errors import AlreadyDone, CheckpointError, ConfigError, DataError, DivergedError
from autocritic.model.backbone import load_backbone
from autocritic.model.export import CONFIG_NAME, HEAD_NAME, load_critic
from autocritic.training import run
from autocritic.training.module import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]


def train(backbone: Path, data: dict, root: Path, name: str, *overrides: str) -> Path:
    cfg = compose_train([*tiny_overrides(backbone, data, root, name), *overrides])
    run.train(cfg)
    return Path(cfg.paths.run_dir)


def train_py(cwd: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in (env or os.environ).items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack: what a hung run was doing
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), f"paths.outputs={cwd / 'outputs'}", "progress_bar=none", *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            out, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"train.py still ran after {timeout} s; its stacks on SIGABRT:\n{err[-6000:]}")


@pytest.fixture(scope="module")
def finished(tiny_backbone, tiny_data, tmp_path_factory) -> Path:
    """The run dir of one finished transfer run (its export and checkpoints)."""
    return train(tiny_backbone, tiny_data, tmp_path_factory.mktemp("finished"), "done", "phase.max_epochs=1")


# ---- a fresh clone: the user's mistakes are refused before the offline default is built ----

FRESH_MISTAKES = {
    "broken data file": (["data=files", "data.train_files=[{bad}]"], "not valid JSON"),
    "missing export": (["phase=finetune", "ckpt=/nonexistent/export"], "is not an autocritic export"),
    "missing model": (["model.name_or_path=/nonexistent/model"], "model.name_or_path='/nonexistent/model' does not exist"),
    "epochs not a number": (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not valid"),
}


@pytest.mark.slow  # a train.py process each: ~5 s
@pytest.mark.parametrize("case", list(FRESH_MISTAKES))
def test_a_fresh_clone_refuses_bad_input_in_seconds_without_building_anything(tmp_path, case):
    overrides, message = FRESH_MISTAKES[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "label": 1}\n{"prompt": \n')
    offline = tmp_path / "offline"  # empty: nothing of the offline default is built
    started = time.perf_counter()
    process = train_py(tmp_path, f"paths.offline={offline}", *(o.format(bad=bad) for o in overrides))
    out, err = finish(process, timeout=60)
    assert process.returncode == 2, err
    assert message in err and "Traceback" not in out + err
    assert not offline.exists() or not any(offline.iterdir())
    assert time.perf_counter() - started < 30


def test_a_user_model_is_never_replaced_by_the_offline_build(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """model.name_or_path set on the offline model group: the user's model is used, the offline one not built."""
    from autocritic.offline import pipeline

    monkeypatch.setattr(pipeline, "ensure_backbone", lambda *a, **k: pytest.fail("the offline backbone was built"))
    overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, tmp_path) if o != "model.offline_default=false"]
    cfg = compose_train([*overrides, "phase.max_epochs=1"])
    assert cfg.model.offline_default
    run.train(cfg)


# ---- honest exits: SIGTERM and SIGINT save last.ckpt and exit 143 / 130 ----


@pytest.mark.slow  # a train.py process: ~10 s
@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_saves_last_ckpt_and_exits_non_zero(tiny_backbone, tiny_data, tmp_path, signum, code, name):
    overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, tmp_path, "stopped") if not o.startswith("paths.outputs")]
    process = train_py(tmp_path, *overrides, "phase=finetune", "phase.init_from=null", "phase.max_epochs=1000")
    checkpoint = tmp_path / "outputs" / "finetune" / "stopped" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 90
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch's checkpoint: training is running
    if not checkpoint.is_file():
        process.kill()
        pytest.fail(process.communicate()[1][-2000:])
    written = checkpoint.stat().st_mtime_ns
    time.sleep(0.5)
    process.send_signal(signum)
    out, err = finish(process, timeout=60)
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("autocritic: stopped by")]
    assert lines == [f"autocritic: stopped by {name}: saved {checkpoint}; resume with "
                     f"`python train.py phase=finetune resume={checkpoint}`."]
    assert checkpoint.stat().st_mtime_ns > written and "Traceback" not in out + err
    assert not (checkpoint.parents[1] / "export").exists()


# ---- damaged exports and checkpoints: one message naming the file ----


def damaged_copy(export: Path, tmp_path: Path, name: str, keep: int) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[:keep])
    return copy


@pytest.mark.parametrize(("name", "keep", "message"), [(HEAD_NAME, 100, "is damaged"), (CONFIG_NAME, 20, "is damaged")])
def test_a_truncated_export_is_one_error_naming_the_file(finished, tmp_path, name, keep, message):
    export = damaged_copy(finished / "export", tmp_path, name, keep)
    with pytest.raises(CheckpointError, match=message) as error:
        load_critic(export)
    assert str(export / name) in str(error.value)


def test_finetune_from_a_damaged_export_is_refused_before_compute(tiny_backbone, tiny_data, finished, tmp_path, monkeypatch):
    export = damaged_copy(finished / "export", tmp_path, HEAD_NAME, 100)
    monkeypatch.setattr(run, "load_backbone", lambda *a, **k: pytest.fail("compute started"))
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), "phase=finetune", f"ckpt={export}"])
    with pytest.raises(CheckpointError, match=HEAD_NAME):
        run.train(cfg)


def test_evaluate_a_damaged_export_exits_2_with_one_line(finished, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from autocritic.evaluation.run import evaluate

    export = damaged_copy(finished / "export", tmp_path, CONFIG_NAME, 20)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={export}", f"paths.outputs={tmp_path}", "suites=[rerank]"])
    with pytest.raises(SystemExit) as exit_info:
        task(evaluate, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{export / CONFIG_NAME} is damaged" in err and "Traceback" not in err


def test_resume_from_a_truncated_checkpoint_is_refused(tiny_backbone, tiny_data, finished, tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes((finished / "checkpoints" / "last.ckpt").read_bytes()[:2000])
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), f"resume={checkpoint}"])
    with pytest.raises(CheckpointError, match="could not be read .* it may be truncated"):
        run.train(cfg)


def test_truncated_backbone_weights_are_one_error_naming_the_model(tiny_backbone, tmp_path):
    copy = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="could not be read .* truncated or corrupt"):
        load_backbone(str(copy))


def test_a_corrupt_feature_cache_is_computed_again(tiny_backbone, tiny_data, tmp_path, caplog):
    first = train(tiny_backbone, tiny_data, tmp_path, "a", "phase.max_epochs=1")
    [cache] = (tmp_path / "cache").glob("*.safetensors")
    cache.write_bytes(b"not a safetensors file")
    second = train(tiny_backbone, tiny_data, tmp_path, "b", "phase.max_epochs=1")
    assert "unreadable" in caplog.text
    assert json.loads((first / "metrics.json").read_text()) == json.loads((second / "metrics.json").read_text())


def test_a_damaged_offline_backbone_is_built_again(tiny_backbone, tmp_path):
    from autocritic.offline.pretrain import BUILD_INFO, is_built

    copy = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, copy)
    (copy / BUILD_INFO).write_text(json.dumps({"fingerprint": "f"}))
    assert is_built(copy, "f")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert not is_built(copy, "f")
    (copy / BUILD_INFO).write_text('{"fingerprint": ')
    assert not is_built(copy, "f")


# ---- a model that did not learn is not exported as one ----


def test_a_run_whose_loss_explodes_exits_3_without_an_export(tiny_backbone, tiny_data, tmp_path):
    overrides = ["phase.max_epochs=3", "phase.lr=1e6", "trainer.gradient_clip_val=0"]
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "hot"), *overrides])
    with pytest.raises(DivergedError, match="the run diverged: the training loss grew") as error:
        run.train(cfg)
    assert error.value.exit_code == 3
    run_dir = Path(cfg.paths.run_dir)
    assert not (run_dir / "export").exists() and "diverged" in json.loads((run_dir / "metrics.json").read_text())
    again = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "kept"), *overrides, "export_diverged=true"])
    run.train(again)
    assert (Path(again.paths.run_dir) / "export" / CONFIG_NAME).is_file()


def test_a_healthy_run_is_not_called_diverged(finished):
    metrics = json.loads((finished / "metrics.json").read_text())
    assert "diverged" not in metrics and (finished / "export").is_dir()


@pytest.mark.parametrize("written", [False, True])
def test_the_non_finite_message_says_whether_a_checkpoint_exists(tmp_path, written):
    checkpoint = tmp_path / "last.ckpt"
    if written:
        checkpoint.write_bytes(b"x")
    with pytest.raises(NonFiniteLossError) as error:
        with run.stopped_on_non_finite(checkpoint):
            raise NonFiniteLossError("the train loss became nan at step 3: training stopped. Lower phase.lr;")
    expected = f"{checkpoint} is intact" if written else "no checkpoint had been written yet"
    assert str(error.value).endswith(expected + ".")


def test_an_overflowing_score_is_refused_before_compute(tiny_backbone, tmp_path):
    rows = tmp_path / "scores.jsonl"
    rows.write_text('{"prompt": "p", "response": "r", "score": 0.5}\n{"prompt": "p", "response": "s", "score": 1e39}\n')
    data = {"train": rows, "val": rows}
    cfg = compose_train([*tiny_overrides(tiny_backbone, data, tmp_path), "data.schema=scalar", "objective=mse"])
    with pytest.raises(DataError, match="row 2: column 'score' is 1e\\+39, too large for float32"):
        run.train(cfg)


# ---- resume=auto ----


def test_resume_auto_after_a_finished_run_does_nothing_and_says_so(tiny_backbone, tiny_data, tmp_path, caplog):
    first = train(tiny_backbone, tiny_data, tmp_path, "first", "phase.max_epochs=1")
    exported = (first / "export" / CONFIG_NAME).stat().st_mtime_ns
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "again"), "phase.max_epochs=1", "resume=auto"])
    with pytest.raises(AlreadyDone, match=f"{first / 'checkpoints' / 'last.ckpt'} has trained all 1 epochs"):
        run.train(cfg)
    assert not Path(cfg.paths.run_dir).exists()
    assert (first / "export" / CONFIG_NAME).stat().st_mtime_ns == exported
    assert task(run.train, cfg) is None  # exit status 0


def test_resume_auto_names_the_checkpoint_it_resumes(tiny_backbone, tiny_data, tmp_path, caplog):
    first = train(tiny_backbone, tiny_data, tmp_path, "first", "phase.max_epochs=1")
    caplog.set_level("INFO", logger="autocritic")
    train(tiny_backbone, tiny_data, tmp_path, "more", "phase.max_epochs=2", "resume=auto")
    assert f"resuming {first / 'checkpoints' / 'last.ckpt'} (1 of 2 epochs done)" in caplog.text


# ---- the same command gives the same model ----


@pytest.mark.slow  # two train.py processes per case
@pytest.mark.parametrize("phase", [["phase.max_epochs=2"], ["phase=finetune", "phase.init_from=null", "phase.max_epochs=1"]])
def test_the_same_command_twice_gives_the_same_weights_and_metrics(tiny_backbone, tiny_data, tmp_path, phase):
    """Two processes (other hash seeds, the feature cache cold then warm): equal heads, equal test metrics."""
    results = []
    for attempt in range(2):
        root = tmp_path / f"run{attempt}"
        root.mkdir()
        overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, tmp_path, "same") if not o.startswith(("paths.outputs", "paths.run_dir"))]
        process = train_py(root, *overrides, *phase, env={**os.environ, "PYTHONHASHSEED": str(attempt + 1)})
        _, err = finish(process, timeout=120)
        assert process.returncode == 0, err[-2000:]
        [export] = (root / "outputs").glob("*/*/export")
        results.append(((export / HEAD_NAME).read_bytes(), json.loads((export.parent / "metrics.json").read_text())))
    assert results[0] == results[1]


def test_a_collapse_is_one_score_for_every_row_not_an_auroc_of_one_half():
    from autocritic.training.divergence import LossWatch, divergence

    watch = LossWatch()
    chance = {"test/auroc": 0.5, "test/score_mean": 0.3, "test/score_spread": 0.8}  # 30 of 60 pairs right
    assert divergence(watch, chance) is None
    collapsed = {"test/auroc": 0.5, "test/score_mean": 1e12, "test/score_spread": 0.0}
    assert divergence(watch, collapsed) == "every test row gets the same score (the head collapsed)"
    assert divergence(watch, {"test/score_mean": -2.0, "test/score_spread": 0.0}) is not None  # mse: no AUROC
