"""Directories built beside their target and moved into place once complete: a crash, a bad setting found late or
Ctrl+C in the middle of a build leaves the previous build as it was, never a half-written one."""

from __future__ import annotations

import shutil
from pathlib import Path


def staging_dir(target: Path) -> Path:
    """An empty directory beside `target` (`<name>.partial`), for the build that will replace it."""
    staging = Path(target).with_name(Path(target).name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def move_into_place(staging: Path, target: Path) -> Path:
    """`staging` becomes `target`; the previous build there is removed only now."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    Path(staging).rename(target)
    return target
