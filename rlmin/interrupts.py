"""Ctrl-C and SIGTERM as requests to stop cleanly: the loop finishes its step, saves and exits.

A second Ctrl-C aborts at once (KeyboardInterrupt). Outside the main thread (where Python cannot
install handlers) the context manager does nothing.
"""
from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as shells do


class StopRequested(Exception):
    """Raised by the trainer after it saved, to unwind to the CLI; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.signal = signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 143)  # a rank stopped by another rank's signal
