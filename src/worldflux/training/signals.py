"""Graceful stops for training loops: Ctrl-C (SIGINT) and SIGTERM finish the current iteration
(or stop between two of its updates, see `Trainer._learn`, or at the next env step of an
evaluation, which the resumed run redoes: `worldflux.training.eval_stop`), then the trainer
checkpoints and stops.

SIGTERM is what ``kill``, ``docker stop``, Slurm and systemd send; a job started in the
background (``nohup ... &``) ignores SIGINT, so SIGTERM is its only graceful stop. Both are
treated alike: the first one is deferred to the end of the iteration, a second one stops at once
(the trainer still saves, as a partial checkpoint). A stop by SIGTERM raises `Terminated`, a
`KeyboardInterrupt`, so every handler of Ctrl-C handles it too; the CLI exits with 143 for it.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM (after its checkpoint was saved)."""


class DeferredStop:
    """While active, the first SIGINT or SIGTERM only sets `requested`; the trainer checks it
    between iterations and calls `stop()`. A second signal raises at once.

    A handler is installed only in the main thread and only over the default disposition
    (Python's Ctrl-C handler, SIG_DFL for SIGTERM): an application's own handlers and a
    SIGINT ignored by the shell stay as they are. The previous handlers return on exit.
    """

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal number received
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            self.stop()
        self.requested = signum

    def stop(self) -> None:
        """Raise the exception of the received signal (`Terminated` for SIGTERM)."""
        if self.requested == signal.SIGTERM:
            raise Terminated("stopped by SIGTERM")
        raise KeyboardInterrupt

    def __enter__(self) -> DeferredStop:
        self.requested = None
        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for signum, default in defaults.items():
            if signal.getsignal(signum) is default:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def stop_report(err: BaseException, step: int, path: Path | None, saved: str, run_dir: Path) -> str:
    """The lines a stopped run prints: why it stopped, the checkpoint (`saved`: "checkpoint" or
    "partial checkpoint" when this stop wrote it, "" when `path` is an older one) and the
    ``worldflux resume`` command."""
    if isinstance(err, Terminated):
        why = "stopped by SIGTERM"
    elif isinstance(err, KeyboardInterrupt):
        why = "interrupted"
    else:
        why = f"failed with {type(err).__name__}: {err}"
    if path is None:
        return f"{why} at step {step}; no checkpoint was saved"
    where = f"{saved} saved: {path}" if saved else f"newest checkpoint: {path}"
    return f"{why} at step {step}; {where}\ncontinue with: worldflux resume {run_dir}"
