"""Ctrl-C handling for training loops: finish the current iteration, then stop."""

from __future__ import annotations

import signal
import threading
from typing import Any


class DeferredSigint:
    """While active (main thread, Python's default SIGINT handler in place), the first Ctrl-C only
    sets `requested`; the trainer checks it between iterations. A second Ctrl-C raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredSigint:
        self.requested = False
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
