"""Hydra wiring of the offline default: `phase=pretrain`, `phase=generate`, and building both on first use.

data/offline/backbone/   tiny Falcon + tokenizer (save_pretrained), build_info.json
data/offline/critic/     self-labelled answers: {train,val,test}.jsonl, pairs_*.jsonl, card.json
data/offline/replay/     documents the finetune phase keeps the language model trained on (offline/replay.py)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from autocritic.errors import invalid_value
from autocritic.offline.generate import CARD, GenerateSettings, build_critic_data, critic_data_built
from autocritic.offline.pinned import NUMERICS, in_pinned_process, run_pinned, unpinnable
from autocritic.offline.pretrain import (
    BUILD_INFO,
    PretrainSettings,
    build_backbone,
    build_fingerprint,
    is_built,
)
from autocritic.offline.replay import DOCUMENTS, ReplaySettings, build_replay_documents
from autocritic.settings import settings_from
from autocritic.signals import stop_with

log = logging.getLogger("autocritic")


def backbone_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline) / "backbone"


def critic_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline) / "critic"


def build_numerics(cfg: DictConfig) -> str | None:
    """The numerics the offline build runs with: offline/pinned.py's, or None for this machine's own."""
    if not cfg.offline.get("pinned", True):
        return None
    why = unpinnable()
    if why is not None:
        warn_unpinned(why)
        return None
    return NUMERICS


@functools.cache
def warn_unpinned(why: str) -> None:
    log.warning(
        "offline build: %s. It builds with this machine's own threads and kernels: another draw than the documented "
        "backbone, with other figures (docs/results.md); the draws' arithmetic check still applies.",
        why,
    )


def ensure_backbone(cfg: DictConfig, force: bool) -> Path:
    settings = settings_from(PretrainSettings, cfg.offline.get("pretrain"), "offline.pretrain")
    out = backbone_dir(cfg)
    log.info("offline backbone: %s %s", "rebuilding" if force else "checking", out)
    progress = cfg.progress_bar != "none"
    numerics = build_numerics(cfg)
    if numerics is None or in_pinned_process():
        build_backbone(settings, out, force=force, progress=progress, numerics=numerics)
    elif force or not is_built(out, build_fingerprint(settings, numerics)):
        log.info("offline backbone: building in a child process (%s)", numerics)
        run_pinned(
            "backbone", settings=dataclasses.asdict(settings), out_dir=str(out), force=force, progress=progress
        )
    info = json.loads((out / BUILD_INFO).read_text())
    log.info("offline backbone ready: %s", {k: v for k, v in info.items() if k != "settings"})
    return out


def ensure_critic_data(cfg: DictConfig, force: bool) -> Path:
    backbone = ensure_backbone(cfg, force=False)
    settings = settings_from(GenerateSettings, cfg.offline.get("generate"), "offline.generate")
    out = critic_dir(cfg)
    log.info("self-labelled critic data: %s %s", "rebuilding" if force else "checking", out)

    def stopped(name: str) -> str:
        return f"stopped by {name} while building the critic data: {out} is as it was; run the same command again."

    progress = cfg.progress_bar != "none"
    with stop_with(stopped):
        if build_numerics(cfg) is None or in_pinned_process():
            build_critic_data(backbone, settings, out, force=force, progress=progress)
        elif force or not critic_data_built(backbone, settings, out):
            log.info("self-labelled critic data: sampling in a child process (%s)", NUMERICS)
            run_pinned(
                "critic",
                backbone_dir=str(backbone),
                settings=dataclasses.asdict(settings),
                out_dir=str(out),
                force=force,
                progress=progress,
            )
    card = json.loads((out / CARD).read_text())
    log.info("critic data ready: %s", json.dumps(card.get("splits", {})))
    return out


def offline_replay_file(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline) / "replay" / DOCUMENTS


def ensure_replay_documents(cfg: DictConfig, force: bool) -> Path:
    settings = settings_from(ReplaySettings, cfg.offline.get("replay"), "offline.replay")
    path = build_replay_documents(settings, offline_replay_file(cfg).parent, force=force)
    log.info("replay documents ready: %s (%d documents)", path, settings.documents)
    return path


def check_offline_settings(cfg: DictConfig) -> None:
    """Every offline build's settings, checked before any of them runs: a bad value in offline.generate must not
    cost a backbone build first."""
    pinned = cfg.offline.get("pinned", True)
    if not isinstance(pinned, bool):
        raise invalid_value(
            "offline.pinned", pinned, "true or false", "true builds with pinned numerics (the same backbone on every "
            "x86 CPU), false with this machine's own"
        )
    settings_from(PretrainSettings, cfg.offline.get("pretrain"), "offline.pretrain")
    settings_from(GenerateSettings, cfg.offline.get("generate"), "offline.generate")
    settings_from(ReplaySettings, cfg.offline.get("replay"), "offline.replay")


def run_offline_phase(cfg: DictConfig) -> None:
    check_offline_settings(cfg)
    force = bool(cfg.phase.get("force", True))
    if cfg.phase.name == "pretrain":
        ensure_backbone(cfg, force=force)
    else:
        ensure_critic_data(cfg, force=force)
    return None
