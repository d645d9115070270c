"""wandb's mode follows `logger.offline`: offline by default, online for sweeps, whatever WANDB_MODE defaults to."""

from __future__ import annotations

import pytest
from helpers import compose_train, resolved, tiny_overrides

from autocritic.errors import ConfigError
from autocritic.tracking import has_wandb_key, wandb_mode
from autocritic.training import run
from autocritic.training.config_check import check_config

KEY = "k" * 40


@pytest.fixture
def no_key(tmp_path, monkeypatch):
    """A machine where nobody ran `wandb login`: no key in the environment, no netrc."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_offline_is_offline_with_or_without_a_key():
    assert wandb_mode(True, {}) == "offline"
    assert wandb_mode(True, {"WANDB_API_KEY": KEY}) == "offline"


def test_online_is_online_even_where_the_environment_defaults_to_offline():
    assert wandb_mode(False, {"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"}) == "online"


def test_disabled_in_the_environment_switches_wandb_off():
    assert wandb_mode(False, {"WANDB_API_KEY": KEY, "WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode(True, {"WANDB_MODE": "disabled"}) == "disabled"


def test_online_without_a_key_says_how_to_get_one(no_key):
    with pytest.raises(ConfigError, match="WANDB_API_KEY.*wandb login"):
        wandb_mode(False, {"HOME": str(no_key)})


def test_the_key_wandb_login_writes_is_found(tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)
    assert has_wandb_key({"HOME": str(tmp_path)})
    assert not has_wandb_key({"HOME": str(tmp_path), "WANDB_BASE_URL": "https://wandb.example.com"})
    assert wandb_mode(False, {"NETRC": str(netrc)}) == "online"


def wandb_overrides(tiny_backbone, tiny_data, tmp_path, offline: bool) -> list[str]:
    overrides = [o for o in tiny_overrides(tiny_backbone, tiny_data, tmp_path) if o != "logger=none"]
    return [*overrides, "logger=wandb", f"logger.offline={str(offline).lower()}"]


@pytest.mark.parametrize("offline", [True, False])
def test_the_trainer_asks_wandb_for_the_configured_mode(tiny_backbone, tiny_data, tmp_path, monkeypatch, offline):
    """What `wandb.init` receives, with the environment defaulting to offline as CI and the entry points once did."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    received = {}

    def init(**kwargs):
        received.update(kwargs)
        raise KeyboardInterrupt  # nothing further: no run, no network

    monkeypatch.setattr(wandb, "init", init)
    cfg = resolved(compose_train(wandb_overrides(tiny_backbone, tiny_data, tmp_path, offline)))
    trainer, _ = run.build_trainer(cfg, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        trainer.logger.experiment  # noqa: B018 - starts the wandb run
    assert received["mode"] == ("offline" if offline else "online")


def test_an_online_sweep_run_without_a_key_is_refused_before_compute(tiny_backbone, tiny_data, tmp_path, no_key):
    cfg = compose_train(wandb_overrides(tiny_backbone, tiny_data, tmp_path, offline=False))
    with pytest.raises(ConfigError, match="logger.offline=false"):
        check_config(cfg)


@pytest.mark.slow  # wandb starts its service process: a few seconds
def test_the_offline_run_is_offline(tiny_backbone, tiny_data, tmp_path):
    import wandb

    cfg = resolved(compose_train(wandb_overrides(tiny_backbone, tiny_data, tmp_path, offline=True)))
    trainer, _ = run.build_trainer(cfg, tmp_path / "run")
    try:
        assert trainer.logger.experiment.settings.mode == "offline"
    finally:
        wandb.finish()
