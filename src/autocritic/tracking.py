"""Where a run's metrics go in wandb: offline by default (no key, no network), online when `logger.offline=false`.

The mode is passed to `wandb.init` itself: an environment default (`WANDB_MODE=offline`) would otherwise win over
Lightning's `WandbLogger(offline=False)`, which only sets the variable when offline is true, and a sweep agent would
never hear of its runs. `WANDB_MODE=disabled` in the environment still switches wandb off altogether.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from autocritic.errors import ConfigError

DEFAULT_HOST = "https://api.wandb.ai"


def is_wandb(logger: Mapping | None) -> bool:
    """Whether a `logger` config section builds Lightning's WandbLogger."""
    return bool(logger) and str(logger.get("_target_", "")).endswith("WandbLogger")


def wandb_mode(offline: bool, environ: Mapping[str, str] = os.environ) -> str:
    """"offline", "online" or "disabled": what the wandb run of a logger with this `offline` setting gets.

    Raises ConfigError for an online run on a machine with no wandb key, before anything is built.
    """
    if environ.get("WANDB_MODE", "").lower() == "disabled":
        return "disabled"
    if offline:
        return "offline"
    if not has_wandb_key(environ):
        raise ConfigError(
            "logger.offline=false sends the run to wandb, and this machine has no wandb key. Export "
            "WANDB_API_KEY=<your key> or run `wandb login` first, or keep the default logger.offline=true "
            "(sync later with `wandb sync <run dir>/wandb/offline-run-*`)."
        )
    return "online"


def has_wandb_key(environ: Mapping[str, str] = os.environ) -> bool:
    """A key in WANDB_API_KEY, or in the netrc file `wandb login` writes for the wandb host."""
    if environ.get("WANDB_API_KEY"):
        return True
    path = Path(environ.get("NETRC") or Path(environ.get("HOME", "~")).expanduser() / ".netrc")
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    try:
        entry = netrc.netrc(str(path)).authenticators(host or "")
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False
    return bool(entry and entry[2])
