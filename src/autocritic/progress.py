"""One progress bar for every step a user waits for (pretraining, sampling, labelling, feature caching, evaluation).

A tqdm bar on stderr when stderr is a terminal; silent when it is not (logs and CI stay clean) or when the user
asked for quiet: AUTOCRITIC_QUIET=1, which `quiet=true` in train.yaml / evaluate.yaml sets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, TypeVar

from tqdm import tqdm

QUIET_ENV = "AUTOCRITIC_QUIET"
T = TypeVar("T")


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes")


def set_quiet(quiet: bool) -> None:
    """Quiet for this process and the processes it starts (DDP workers, sweep jobs)."""
    if quiet:
        os.environ[QUIET_ENV] = "1"


def track(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str | None = None,
    *,
    enabled: bool = True,
    force: bool = False,
    leave: bool = True,
    file: IO[str] | None = None,
) -> tqdm:
    """Iterate with a bar, or without `iterable` a bar moved by `.update(n)`; close it (or use it as a context
    manager) when done. `enabled=False` (a caller's own switch) hides it; `force` shows it even off a terminal."""
    stream = file if file is not None else sys.stderr
    on_terminal = hasattr(stream, "isatty") and stream.isatty()
    show = force or (enabled and on_terminal and not is_quiet())
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=leave, file=stream, dynamic_ncols=True)
