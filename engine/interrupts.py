"""Stopping long work cleanly on SIGINT (Ctrl-C) and SIGTERM (systemd, kill).

The handler only sets an event; the work (a send, a worker) checks it, finishes
the messages in flight, gives every other claim back and returns its summary.
The command then exits with 128 + the signal's number (130 for SIGINT, 143 for
SIGTERM), as shells expect. A second Ctrl-C while stopping is left to Python's
default (KeyboardInterrupt): a way out when something hangs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StopRequest:
    event: threading.Event = field(default_factory=threading.Event)
    signal: int | None = None

    @property
    def name(self) -> str | None:
        return None if self.signal is None else signal.Signals(self.signal).name

    @property
    def exit_code(self) -> int:
        return 0 if self.signal is None else 128 + self.signal


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set ``request.event`` while the block runs (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(number: int, _frame) -> None:
        if request.event.is_set() and number == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        request.signal = request.signal or number
        request.event.set()

    previous = {
        number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield request
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
