"""Refresh the critic on the new generator (the V-STaR half): the generator answers the labelled split, a checker
labels the answers, and `phase=transfer` retrains the head on the generator's frozen states, starting from the last
round's head. The run is an ordinary `python train.py phase=transfer` (its own run directory, checkpoints and
export), composed from the same configs with `improve.critic_refresh.overrides` on top."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from autocritic.errors import ConfigError
from autocritic.model.export import load_critic, save_critic
from autocritic.model.head import HeadSettings
from autocritic.training.config_check import check_config
from autocritic.training.run import train

CONF = Path(__file__).resolve().parents[1] / "conf"  # the configs that ship in the package (autocritic/conf)


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def transfer_overrides(
    generator: Path, previous: Path, run_dir: Path, train_file: Path, val_file: Path, shared: Sequence[str]
) -> list[str]:
    return [
        "phase=transfer",
        "phase.init_from=transfer",
        f"ckpt={previous}",
        f"model.name_or_path={generator}",
        f"paths.run_dir={run_dir}",
        f"paths.cache={run_dir / 'cache'}",
        f"data.train_files=[{train_file}]",
        "data.train_schema=null",  # the labelled answers are pointwise rows, whatever the recipe trains on
        "objective.kind=bce",
        f"data.val_files=[{val_file}]",
        f"data.test_files=[{val_file}]",
        "data.replay_files=[]",
        "logger=none",
        "export.sequence_classification=false",
        *shared,
    ]


def compose_train_config(overrides: Sequence[str]):
    """train.yaml with `overrides`, inside a running Hydra app or from the package's configs outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def check_refresh_overrides(start: Path, overrides: Sequence[str]) -> None:
    """The refresh's `phase=transfer` config composed and checked now, so a bad override in
    improve.critic_refresh.overrides fails in seconds, not after round 1's sampling and fine-tuning."""
    where = "improve.critic_refresh.overrides"
    try:
        cfg = compose_train_config(
            transfer_overrides(start, start, Path("run"), Path("train.jsonl"), Path("val.jsonl"), overrides)
        )
    except Exception as error:  # Hydra's override and composition errors
        reason = " ".join(str(error).split()).rstrip(".")
        raise ConfigError(f"{where}={list(overrides)} do not compose: {reason}. Fix or remove that override.") from None
    try:
        check_config(cfg)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def refresh_critic(
    generator: Path,
    previous: Path,
    out: Path,
    train_rows: Sequence[dict],
    val_rows: Sequence[dict],
    shared_overrides: Sequence[str],
    facts: dict,
) -> Path:
    """Train the head, then write `out/export` holding the generator's weights and the new head (a full export:
    a round's export stands alone)."""
    data = out / "critic_data"
    train_file, val_file = write_rows(data / "train.jsonl", train_rows), write_rows(data / "val.jsonl", val_rows)
    run_dir = out / "critic"
    cfg = compose_train_config(transfer_overrides(generator, previous, run_dir, train_file, val_file, shared_overrides))
    train(cfg)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)  # read by this refresh only: most of a round's disk
    trained = load_critic(run_dir / "export")
    return save_critic(
        trained.model,
        trained.tokenizer,
        out / "export",
        backbone_name_or_path=str(generator),
        head_settings=HeadSettings(**trained.config["head"]),
        template=trained.template,
        backbone_mode="full",
        extra={k: v for k, v in trained.config.items() if k in ("objective", "data", "test_metrics")}
        | {"phase": "improve", "started_from": str(previous)} | facts,
        sequence_classification=False,
    )
