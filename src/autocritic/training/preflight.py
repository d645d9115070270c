"""Everything a user can get wrong about a training run, checked before any build, download or forward pass: the
export to start from, the checkpoint to resume, the model directory, every row of the data files.

The offline default is built only when the run uses it: a run on your own model and files never waits for the toy
world, and a mistake in them is reported in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from autocritic.data.datamodule import DataSettings, as_list, read_rows
from autocritic.data.replay import read_replay_files
from autocritic.errors import AlreadyDone, CheckpointError
from autocritic.model.backbone import check_model_source
from autocritic.model.export import CONFIG_NAME, HEAD_NAME, read_critic_config, read_safetensors
from autocritic.training.config_check import SCRATCH, starts_from_scratch

log = logging.getLogger("autocritic")

METRICS_NAME = "metrics.json"  # written last by a run: test metrics (and why, if it diverged)


@dataclass
class Preflight:
    start: Path | None  # the export phase=finetune starts from
    resume: str | None  # the last.ckpt to resume
    rows: dict[str, list[dict]] | None  # the user's checked rows (None: the offline data, read after its build)


def offline_root(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline).expanduser().resolve()


def uses_offline_backbone(cfg: DictConfig) -> bool:
    """The offline tiny Falcon is this run's model: its config group says so and its path was not overridden."""
    if not cfg.model.get("offline_default"):
        return False
    return Path(cfg.model.name_or_path).expanduser().resolve() == offline_root(cfg) / "backbone"


def uses_offline_data(cfg: DictConfig) -> bool:
    """Some data file of this run is one the offline build writes."""
    if not cfg.data.get("offline_default"):
        return False
    files = as_list(cfg.data.train_files) + as_list(cfg.data.val_files) + as_list(cfg.data.test_files)
    root = offline_root(cfg)
    return any(Path(f).expanduser().resolve().is_relative_to(root) for f in files)


def latest(pattern: str, root: Path) -> Path | None:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def check_export(path: Path) -> Path:
    """An export to start from: its config and head must be readable (the backbone is the run's own model)."""
    read_critic_config(path)
    read_safetensors(path / HEAD_NAME)
    return path


def find_start_export(cfg: DictConfig) -> Path | None:
    """phase=finetune starts from `ckpt` or, if unset, the latest transfer export; phase.init_from=scratch from none."""
    if starts_from_scratch(cfg):
        return None
    if cfg.ckpt:
        return check_export(Path(cfg.ckpt).expanduser())
    found = latest(f"{cfg.phase.init_from}/*/export/{CONFIG_NAME}", Path(cfg.paths.outputs))
    if found is None:
        raise CheckpointError(
            f"phase={cfg.phase.name} starts from the latest {cfg.phase.init_from} export, but none was found under "
            f"{cfg.paths.outputs}/{cfg.phase.init_from}/. Add phase.init_from={SCRATCH} to train a new head with the "
            f"whole model, run `python train.py phase={cfg.phase.init_from}` first, or pass ckpt=<export dir>."
        )
    log.info("starting from the latest %s export: %s", cfg.phase.init_from, found.parent)
    return check_export(found.parent)


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent  # <run dir>/checkpoints/last.ckpt


def read_lightning_checkpoint(path: Path) -> dict:
    """A checkpoint Lightning can resume from: readable, with weights and a training position."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # truncated zip, not a checkpoint, unpickling errors
        raise CheckpointError(
            f"{path} could not be read ({type(error).__name__}: {error}); it may be truncated. Resume from another "
            "checkpoint (best.ckpt beside it), or start afresh without resume=."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a Lightning checkpoint of autocritic (no state_dict or epoch).")
    return state


def epochs_done(state: dict) -> int:
    """Epochs whose training batches all ran before this checkpoint was written."""
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", state["epoch"]))


def find_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume, checked; a run with nothing left to train is not run again."""
    if cfg.resume in (None, "", "none"):
        return None
    auto = cfg.resume == "auto"
    if auto:
        path = latest(f"{cfg.phase.name}/*/checkpoints/last.ckpt", Path(cfg.paths.outputs))
        if path is None:
            log.info("resume=auto: no earlier %s run to resume, starting fresh", cfg.phase.name)
            return None
    else:
        path = Path(cfg.resume).expanduser()
        if not path.is_file():
            raise CheckpointError(f"resume={cfg.resume!r} is not a file: pass a last.ckpt path or resume=auto.")
    done, wanted = epochs_done(read_lightning_checkpoint(path)), cfg.trainer.max_epochs
    if done >= wanted:
        finished = (
            f"{path} has trained all {wanted} epochs (phase.max_epochs) of {run_dir_of(path)}; its test and export "
            "are written when that run ends"
        )
        if auto:
            raise AlreadyDone(f"resume=auto: {finished}. Nothing to resume; start a new run without resume=auto.")
        raise CheckpointError(
            f"resume: {finished}. Raise phase.max_epochs to train it further, or start a new run without resume=."
        )
    log.info("resuming %s (%d of %d epochs done)", path, done, wanted)
    return str(path)


def preflight(cfg: DictConfig, data: DataSettings) -> Preflight:
    """The checks of a training run that need no model: in seconds, before the offline default is built."""
    if not uses_offline_backbone(cfg):
        check_model_source(cfg.model.name_or_path)
    start = find_start_export(cfg)
    resume = find_resume(cfg)
    rows = None if uses_offline_data(cfg) else read_rows(data)
    replay = [f for f in as_list(data.replay_files) if not Path(f).expanduser().resolve().is_relative_to(offline_root(cfg))]
    if replay:
        read_replay_files(replay)
    return Preflight(start, resume, rows)
