"""Honest exits: a run stopped by SIGTERM (timeout, SLURM preemption, Kubernetes) or SIGINT (Ctrl+C) saves
`last.ckpt`, says so in one line, and exits 143 / 130, so schedulers and `&&` chains never take it for success.

Lightning notices SIGTERM at the next batch and raises `SIGTERMException`, a `SystemExit` with status 0; on Ctrl+C it
catches the `KeyboardInterrupt` and calls `sys.exit(1)`. Both pass the callbacks' `on_exception` first, where
`SaveOnSignal` writes the checkpoint; `interrupted` turns the exit that follows into an `Interrupted` error.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from autocritic.errors import Interrupted

SIGNALS = {SIGTERMException: ("SIGTERM", 128 + signal.SIGTERM), KeyboardInterrupt: ("SIGINT", 128 + signal.SIGINT)}


class SaveOnSignal(L.Callback):
    """Writes `checkpoint` when a signal stops training (not on errors: a failed step must not overwrite it);
    with `checkpoint=None` it only records the signal (a build that restarts from scratch)."""

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.received: str | None = None
        self.saved = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        name = next((n for kind, (n, _) in SIGNALS.items() if isinstance(exception, kind)), None)
        if name is None:
            return
        self.received = name
        if self.checkpoint is not None and trainer.state.fn == "fit" and trainer.global_step > 0:
            trainer.save_checkpoint(self.checkpoint)
            self.saved = True


@contextmanager
def interrupted(callback: SaveOnSignal, resume_hint: str = "", start_again: str = "the same command again"):
    """Around `trainer.fit` / `trainer.test`: the exit a signal causes becomes one message and status 128 + signum."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        if callback.received is None:
            raise
        code = dict(SIGNALS.values())[callback.received]
        if callback.saved:
            what = f"saved {callback.checkpoint}; resume with `{resume_hint}`"
        elif callback.checkpoint is not None and callback.checkpoint.is_file():
            what = f"{callback.checkpoint} holds the training so far; resume with `{resume_hint}`"
        else:
            what = f"nothing was saved; run {start_again}"
        raise Interrupted(f"stopped by {callback.received}: {what}.", code) from None


class Terminated(BaseException):
    """SIGTERM, raised where the process was (by the handler `stop_with` installs). Not an `Exception`, as
    KeyboardInterrupt is not: library code that catches `Exception` around the spot (inspect, Lightning) must not
    turn it into another error."""


@contextmanager
def stop_with(message: Callable[[str], str]):
    """Around work with loops of its own (not one Lightning fit): SIGTERM or Ctrl+C anywhere inside, a fit's own
    `Interrupted` included (its resume hint is the inner run's, not this one's), ends as one
    `Interrupted(message(signal name), 128 + signum)`."""
    def terminate(signum, frame):
        raise Terminated()

    main = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    except Terminated:
        raise Interrupted(message("SIGTERM"), 128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        raise Interrupted(message("SIGINT"), 128 + signal.SIGINT) from None
    except Interrupted as error:
        name = "SIGTERM" if error.exit_code == 128 + signal.SIGTERM else "SIGINT"
        raise Interrupted(message(name), error.exit_code) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
