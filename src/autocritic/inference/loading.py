"""From a model name to a generator: an export directory or a hub id, loaded once per process.

    CriticChatModel(model="runs/export")        a local export (checked at construction: critic_config.json)
    CriticLLM(model="owner/critic")             a hub repository holding an export (downloaded at first use)

`resolve_model` is the one place a name becomes a directory; `shared_generator` loads it on first use and keeps it
in a module-level cache keyed by (directory, device, dtype), so every adapter built from the same name (LangChain
builds many: `bind_tools`, `with_structured_output`, one per agent) shares one copy of the weights.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from autocritic.errors import CheckpointError, ConfigError
from autocritic.inference.generation import CriticGenerator
from autocritic.model.export import CONFIG_NAME
from autocritic.model.hub import locate_export

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_GENERATORS: dict[tuple[str, str, str], CriticGenerator] = {}
_GENERATORS_LOCK = threading.Lock()


def check_model(name: str) -> None:
    """The cheap checks of a `model=` value, done at construction: a local directory must be an export; a name that
    is no local path must look like a hub id. Whether a hub id exists is found out at first use."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"model={name!r}: {path} is not an autocritic export ({CONFIG_NAME} is missing). Pass the export "
                "directory that `python train.py` writes at <run dir>/export."
            )
    elif not _HUB_ID.match(name):
        raise ConfigError(
            f"model={name!r}: no such directory, and not a hub id (owner/name). Pass an export directory "
            "(<run dir>/export) or a hub repository holding one."
        )


def resolve_model(name: str) -> Path:
    """The export directory of `name`: the local directory itself, or the hub snapshot of a repository id
    (`locate_export`: its cache, `HF_HUB_OFFLINE` and errors)."""
    check_model(name)
    local = locate_export(name).resolve()
    if not (local / CONFIG_NAME).is_file():
        raise CheckpointError(f"model={name!r}: the hub repository has no {CONFIG_NAME}: not an export.")
    return local


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shared_generator(name: str, device: str | None = None, dtype: str = "float32") -> CriticGenerator:
    """The generator of `name` on `device` in `dtype`, loaded on first use and shared by every caller after."""
    key = (str(resolve_model(name)), device or default_device(), dtype)
    with _GENERATORS_LOCK:  # two threads asking at once load it once
        if key not in _GENERATORS:
            _GENERATORS[key] = CriticGenerator.from_export(key[0], device=key[1], dtype=key[2])
        return _GENERATORS[key]


def clear_generators() -> None:
    """Forget every loaded generator (their memory is freed once no adapter holds one). Needed after exporting
    again into a directory already loaded: the cache is keyed by the path, not by what the files hold."""
    with _GENERATORS_LOCK:
        _GENERATORS.clear()
