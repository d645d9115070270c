"""Hydra wiring of the offline default: `phase=pretrain`, `phase=generate`, and building both on first use.

data/offline/backbone/   tiny Falcon + tokenizer (save_pretrained), build_info.json
data/offline/critic/     self-labelled answers: {train,val,test}.jsonl, pairs_*.jsonl, card.json
data/offline/replay/     documents the finetune phase keeps the language model trained on (offline/replay.py)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autocritic.errors import ConfigError, invalid_value, is_of_kind
from autocritic.offline.generate import CARD, GenerateSettings, build_critic_data
from autocritic.offline.pretrain import BUILD_INFO, PretrainSettings, build_backbone
from autocritic.offline.replay import DOCUMENTS, ReplaySettings, build_replay_documents

log = logging.getLogger("autocritic")


def settings_from(cls, cfg: DictConfig | None, where: str):
    values = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}.")
    for name, value in values.items():
        if isinstance(value, list) and isinstance(known[name].default, tuple):
            values[name] = tuple(value)
        check_type(known[name], values[name], f"{where}.{name}")
    return cls(**values)


def check_type(spec: dataclasses.Field, value, key: str) -> None:
    """A value of the wrong kind (a string for a mapping, text for a number) is refused before any build."""
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    accepted = {bool: (bool,), int: (int,), float: (int, float), dict: (dict,), str: (str,)}.get(type(default))
    if value is None or accepted is None or is_of_kind(value, accepted):
        return
    names = {int: "whole number", float: "number", dict: "mapping", str: "string"}
    example = "{arithmetic: 0.5, summary: 0.5}" if isinstance(default, dict) else repr(default)
    expected = "true or false" if isinstance(default, bool) else f"a {names[type(default)]} such as {example}"
    fix = "A mapping on the command line is written key={a: 1, b: 2} (quote it for the shell)."
    raise invalid_value(key, value, expected, fix)


def backbone_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline) / "backbone"


def critic_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.offline) / "critic"


def ensure_backbone(cfg: DictConfig, force: bool) -> Path:
    settings = settings_from(PretrainSettings, cfg.offline.get("pretrain"), "offline.pretrain")
    out = backbone_dir(cfg)
    log.info("offline backbone: %s %s", "rebuilding" if force else "checking", out)
    build_backbone(settings, out, force=force, progress=cfg.progress_bar != "none")
    info = json.loads((out / BUILD_INFO).read_text())
    log.info("offline backbone ready: %s", {k: v for k, v in info.items() if k != "settings"})
    return out


def ensure_critic_data(cfg: DictConfig, force: bool) -> Path:
    backbone = ensure_backbone(cfg, force=False)
    settings = settings_from(GenerateSettings, cfg.offline.get("generate"), "offline.generate")
    out = critic_dir(cfg)
    log.info("self-labelled critic data: %s %s", "rebuilding" if force else "checking", out)
    build_critic_data(backbone, settings, out, force=force, progress=cfg.progress_bar != "none")
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


def run_offline_phase(cfg: DictConfig) -> None:
    force = bool(cfg.phase.get("force", True))
    if cfg.phase.name == "pretrain":
        ensure_backbone(cfg, force=force)
    else:
        ensure_critic_data(cfg, force=force)
    return None
