"""Config validation: every mistake is one clear error before any compute, and `train.py` exits 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_train, tiny_overrides
from omegaconf import OmegaConf

from autocritic.data.datamodule import CriticDataModule
from autocritic.errors import CheckpointError, ConfigError
from autocritic.training import run

REPO = Path(__file__).resolve().parents[1]

# overrides -> (error, words the message must contain)
BAD = {
    "lr not a number": (
        ["phase.lr=abc"],
        ConfigError,
        "phase.lr='abc' is not valid: expected a positive number",
    ),
    "lr is a bool": (["phase.lr=true"], ConfigError, "phase.lr=True is not valid"),
    "zero batch": (
        ["data.batch_size=0"],
        ConfigError,
        "data.batch_size=0 is not valid: expected a positive integer",
    ),
    "float batch": (["data.batch_size=2.5"], ConfigError, "data.batch_size=2.5 is not valid"),
    "lora dropout of 2": (["peft=lora", "peft.dropout=2"], ConfigError, "peft.dropout=2 is not valid: expected a number in [0, 1)"),
    "bad dtype": (["model.dtype=float8"], ConfigError, "model.dtype='float8' is not valid"),
    "bad head": (["head.kind=conv"], ConfigError, "head.kind='conv' is not valid: expected linear, mlp or attention"),
    "window on an mlp head": (["head.window=8"], ConfigError, "head.window=8 needs an attention head"),
    "token ids on an mlp head": (["head.tokens=true"], ConfigError, "head.tokens=true needs an attention head"),
    "token ids not a bool": (["head=attention", "head.tokens=3"], ConfigError, "head.tokens"),
    "no head members": (["head.members=0"], ConfigError, "head.members=0 is not valid: expected a positive integer"),
    "attention width vs heads": (
        ["head=attention", "head.hidden_dim=30"],
        ConfigError,
        "must be a multiple of head.attention_heads=4",
    ),
    "bad schedule": (["phase.schedule=linear"], ConfigError, "phase.schedule='linear' is not valid: expected constant or cosine"),
    "objective vs schema": (
        ["objective=mse"],
        ConfigError,
        "objective=mse needs scalar data but data.schema=pointwise",
    ),
    "pairwise vs schema": (
        ["objective=pairwise"],
        ConfigError,
        "use objective=bce or data of the pairwise schema",
    ),
    "lm loss in transfer": (
        ["objective.lm_weight=0.5"],
        ConfigError,
        "lm_weight>0 trains the language model",
    ),
    "lora in transfer": (["peft=lora"], ConfigError, "phase=transfer freezes the backbone"),
    "finetune without transfer": (
        ["phase=finetune"],
        CheckpointError,
        "none was found under",
    ),
    "finetune without transfer names the one word to add": (
        ["phase=finetune"],
        CheckpointError,
        "Add phase.init_from=scratch",
    ),
    "init_from unknown": (["phase=finetune", "phase.init_from=nothing"], ConfigError, "phase.init_from='nothing'"),
    "ckpt with init_from scratch": (
        ["phase=finetune", "phase.init_from=scratch", "ckpt=/x"],
        ConfigError,
        "starts a new head",
    ),
    "export neither best nor last": (["checkpoint.export=first"], ConfigError, "checkpoint.export='first'"),
    "ckpt not an export": (["phase=finetune", "ckpt=/"], CheckpointError, "is not an autocritic export"),
    "nf4 full finetune": (
        ["phase=finetune", "peft=none", "quantization=nf4"],
        ConfigError,
        "quantization=nf4 with peft=none",
    ),
    "nf4 key full finetune": (
        ["phase=finetune", "peft=none", "quantization.mode=nf4"],
        ConfigError,
        "use peft=lora (QLoRA)",
    ),
    "unknown phase": (["phase.name=distill"], ConfigError, "phase='distill' is unknown"),
    "resume missing": (
        ["resume=/no/such/last.ckpt"],
        CheckpointError,
        "resume='/no/such/last.ckpt' is not a file",
    ),
    "token values from the feature cache": (
        ["objective.value_weight=1.0"],
        ConfigError,
        "the feature cache keeps the last token only",
    ),
    "deepspeed zero-3": (
        ["trainer=deepspeed", "trainer.strategy.stage=3"],
        ConfigError,
        "use ZeRO stage 2",
    ),
    "epochs not a number": (["trainer.max_epochs=abc"], ConfigError, "trainer.max_epochs='abc' is not valid: expected a positive integer"),
    "zero epochs": (["phase.max_epochs=0"], ConfigError, "phase.max_epochs=0 is not valid"),
    "zero accumulation": (["trainer.accumulate_grad_batches=0"], ConfigError, "trainer.accumulate_grad_batches=0 is not valid"),
    "negative clipping": (["trainer.gradient_clip_val=-1"], ConfigError, "trainer.gradient_clip_val=-1 is not valid"),
    "bad precision": (["trainer.precision=8"], ConfigError, "trainer.precision=8 is not valid"),
    "bad accelerator": (["trainer.accelerator=quantum"], ConfigError, "trainer.accelerator='quantum' is not valid"),
    "bad devices": (["trainer.devices=0"], ConfigError, "trainer.devices=0 is not valid"),
    "unknown trainer key": (["+trainer.max_epoch=3"], ConfigError, "Lightning's Trainer does not take: ['max_epoch']"),
    "top k not a number": (["checkpoint.save_top_k=abc"], ConfigError, "checkpoint.save_top_k='abc' is not valid"),
    "step checkpoints at 0": (["checkpoint.every_n_train_steps=0"], ConfigError, "checkpoint.every_n_train_steps=0"),
    "bad progress bar": (["progress_bar=bogus"], ConfigError, "progress_bar='bogus' is not valid: expected rich, tqdm or none"),
    "bad export_diverged": (["export_diverged=maybe"], ConfigError, "export_diverged='maybe' is not valid"),
    "ckpt in transfer": (["ckpt=/some/export"], ConfigError, "ckpt='/some/export' is read by phases that start from an export"),
    "bad template": (
        ["data.template='{response}{prompt}'"],
        ConfigError,
        "must contain {prompt} and end with {response}",
    ),
}


@pytest.fixture
def refuse_compute(monkeypatch):
    """Fail the test if a model is loaded or data tokenized: a config error must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("compute started before the config was validated")

    monkeypatch.setattr(run, "load_backbone", refuse)
    monkeypatch.setattr(CriticDataModule, "setup", refuse)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_before_compute(tiny_backbone, tiny_data, tmp_path, refuse_compute, case):
    overrides, error, message = BAD[case]
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), *overrides])
    with pytest.raises(error) as raised:
        run.train(cfg)
    assert message in str(raised.value)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()  # nothing written


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (["trainer=gpu"], 0, "trainer.accelerator=gpu asks for a GPU (trainer=gpu, fsdp and deepspeed do), but torch sees none"),
        (["trainer=fsdp"], 0, "or set trainer.accelerator=cpu"),
        (["trainer=gpu", "trainer.devices=2"], 1, "trainer.devices=2 asks for 2 GPUs, but torch sees 1"),
        (["trainer=gpu", "trainer.devices=[0,3]"], 2, "trainer.devices=[0, 3] asks for 4 GPUs, but torch sees 2"),
    ],
)
def test_a_trainer_asking_for_missing_gpus_fails_before_compute(
    tiny_backbone, tiny_data, tmp_path, refuse_compute, monkeypatch, overrides, gpus, message
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    # tiny_overrides sets trainer.accelerator=cpu: the presets' own accelerator is put back
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), *overrides, "trainer.accelerator=gpu"])
    with pytest.raises(ConfigError, match="asks for") as raised:
        run.train(cfg)
    assert message in str(raised.value)
    assert not (tmp_path / "outputs").exists()


def test_a_trainer_asking_for_the_gpus_there_are_passes_the_device_check(monkeypatch):
    import torch

    from autocritic.training.config_check import check_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for devices in ("2", "auto", "-1", "[1]"):
        check_devices(compose_train(["trainer=gpu", f"trainer.devices={devices}"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mix": "{summary:0.5}"}, "offline.replay.mix='{summary:0.5}' is not valid: expected a mapping"),
        ({"documents": "many"}, "offline.replay.documents='many' is not valid: expected a whole number"),
        ({"documents": True}, "offline.replay.documents=True is not valid: expected a whole number"),
    ],
)
def test_offline_settings_of_the_wrong_kind_are_refused(values, message):
    from autocritic.offline.replay import ReplaySettings
    from autocritic.settings import settings_from

    with pytest.raises(ConfigError) as raised:
        settings_from(ReplaySettings, OmegaConf.create(values), "offline.replay")
    assert message in str(raised.value)
    assert settings_from(ReplaySettings, OmegaConf.create({"documents": 10, "mix": {"summary": 1}}), "x").documents == 10


def test_a_mix_override_changes_only_the_kinds_it_names():
    """An override of one kind's weight keeps the others; the default builds keep their fingerprints."""
    from autocritic.offline.pretrain import PretrainSettings
    from autocritic.offline.replay import ReplaySettings
    from autocritic.settings import settings_from

    cfg = compose_train()
    assert settings_from(PretrainSettings, cfg.offline.pretrain, "p").fingerprint() == PretrainSettings().fingerprint()
    assert settings_from(ReplaySettings, cfg.offline.replay, "r").fingerprint() == ReplaySettings().fingerprint()
    cfg = compose_train(["offline.pretrain.mix={copy: 0.12, summary: 0}"])
    mix = settings_from(PretrainSettings, cfg.offline.pretrain, "offline.pretrain").mix
    assert mix["copy"] == 0.12 and mix["summary"] == 0 and mix["arithmetic"] == PretrainSettings().mix["arithmetic"]
    assert settings_from(ReplaySettings, cfg.offline.replay, "offline.replay").mix == mix  # replay follows
    with pytest.raises(ConfigError, match=r"offline.pretrain: mix=.* weights must be numbers ≥ 0"):
        settings_from(PretrainSettings, compose_train(["offline.pretrain.mix={copy: -1}"]).offline.pretrain, "offline.pretrain")


def test_the_offline_default_trains_the_checker_on_its_own_answers_to_many_problems():
    """The YAML and the dataclass agree on the problems; transfer reads pairs of the sampled answers; finetune reads
    the same pairs, a sixth of them per epoch, and keeps the checker's monitor; the step world keeps its own count."""
    from autocritic.offline.generate import GenerateSettings
    from autocritic.settings import settings_from

    transfer = compose_train(["phase=transfer"])
    assert settings_from(GenerateSettings, transfer.offline.generate, "g") == GenerateSettings()
    assert transfer.offline.generate.train_problems == 24000
    assert list(transfer.data.train_files) == ["data/offline/critic/pairs_train.jsonl"]
    assert (transfer.phase.max_epochs, transfer.phase.lr, transfer.data.batch_size) == (18, 6e-3, 256)
    assert transfer.trainer.limit_train_batches is None
    finetune = compose_train(["phase=finetune"])
    assert finetune.trainer.limit_train_batches == 0.17 and finetune.phase.max_epochs == 3
    assert (finetune.objective.monitor, finetune.phase.lr) == ("val/within_auroc", 3e-4)
    assert compose_train(["phase=finetune", "data=example"]).trainer.limit_train_batches is None  # the user's data: all
    assert compose_train(["experiment=steps"]).offline.generate.train_problems == 3000


def test_a_bad_offline_setting_fails_before_any_build(tmp_path):
    """offline.generate is checked before the backbone is built, and nothing is written."""
    from autocritic.offline.pipeline import run_offline_phase

    cfg = compose_train(["phase=generate", f"paths.offline={tmp_path / 'offline'}", "offline.generate.temperature=-1"])
    with pytest.raises(ConfigError, match=r"offline.generate: temperature=-1 must be ≥ 0"):
        run_offline_phase(cfg)
    assert not (tmp_path / "offline").exists()


def test_settings_follow_their_annotations():
    """Optional values take null, whole numbers pass where a number is asked, lists become tuples."""
    from autocritic.evaluation.rerank import Settings
    from autocritic.settings import settings_from

    settings = settings_from(Settings, {"temperature": None, "ns": [1, 4], "max_new_tokens": None}, "rerank")
    assert settings.temperature is None and settings.ns == (1, 4)
    assert settings_from(Settings, {"temperature": 1}, "rerank").temperature == 1
    with pytest.raises(ConfigError, match=r"rerank.temperature='hot' is not valid: expected a number"):
        settings_from(Settings, {"temperature": "hot"}, "rerank")
    with pytest.raises(ConfigError, match=r"rerank has unknown keys \['n_sample'\]"):
        settings_from(Settings, {"n_sample": 4}, "rerank")


def test_missing_model_directory(tiny_data, tmp_path, refuse_compute):
    missing = tmp_path / "no_model"
    cfg = compose_train(tiny_overrides(missing, tiny_data, tmp_path))
    with pytest.raises(ConfigError, match=f"model.name_or_path='{missing}' does not exist"):
        run.train(cfg)


def test_a_good_config_passes_validation(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """The control for the cases above: the same overrides without the mistake reach the model loading."""
    reached = []

    def stop(*args, **kwargs):
        reached.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "load_backbone", stop)
    cfg = compose_train(tiny_overrides(tiny_backbone, tiny_data, tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run.train(cfg)
    assert reached


def train_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"paths.outputs={tmp_path / 'outputs'}", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_train_py_bad_value_exits_2_without_traceback(tmp_path):
    result = train_py(tmp_path, "phase.lr=abc")
    assert result.returncode == 2, result.stderr
    assert "autocritic: phase.lr='abc' is not valid" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_train_py_unknown_key_is_hydras_error(tmp_path):
    result = train_py(tmp_path, "no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("phase", ["pretrain", "generate"])
def test_offline_phases_pass_the_checks_without_a_trainer_section_of_their_own(monkeypatch, phase):
    """trainer.max_epochs reads ${phase.max_epochs}, which the offline phases do not define."""
    from autocritic.offline import pipeline

    built = []
    monkeypatch.setattr(pipeline, "run_offline_phase", lambda cfg: built.append(cfg.phase.name))
    run.train(compose_train([f"phase={phase}", "logger=none"]))
    assert built == [phase]


def test_a_run_dir_that_exists_is_not_shared(tmp_path):
    from autocritic.run_dirs import claim_new_dir

    taken = tmp_path / "transfer" / "2026-12-06_16-46-08"
    taken.mkdir(parents=True)
    (taken / "keep").write_text("the first run's")
    claimed = claim_new_dir(str(taken))
    assert claimed == str(taken.with_name("2026-12-06_16-46-08_2"))
    assert Path(claimed).is_dir() and (taken / "keep").read_text() == "the first run's"
    assert claim_new_dir(str(taken)) == claimed  # Hydra resolving again in the same process: the same dir
    assert claim_new_dir(str(tmp_path / "new")) == str(tmp_path / "new")


def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path):
    """Both processes ask Hydra for the same run dir, as two runs of one second do; each gets its own."""
    same = f"hydra.run.dir=${{new_dir:{tmp_path / 'outputs' / 'same'}}}"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline"}
    command = [sys.executable, str(REPO / "train.py"), f"paths.outputs={tmp_path / 'outputs'}", "phase.lr=abc", same]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run_ in runs:
        assert run_.wait(timeout=120) == 2, run_.stderr.read()
    dirs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert dirs == ["same", "same_2"]
    for name in dirs:
        assert (tmp_path / "outputs" / name / ".hydra" / "config.yaml").is_file()


def test_the_entry_points_claim_their_run_dirs():
    for name in ("train.yaml", "evaluate.yaml"):
        run_dir = OmegaConf.load(REPO / "conf" / name).hydra.run._get_node("dir")._value()
        assert run_dir.startswith("${new_dir:"), (name, run_dir)
