"""Directories built beside their target and moved into place once complete: a crash, a bad setting found late or
Ctrl+C in the middle of a build leaves the previous build as it was, never a half-written one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """An empty directory beside `target` (`<name>.partial`) to build in: it replaces `target` when the block ends,
    and is removed, `target` untouched, when the block raises (a signal included)."""
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
