"""Ctrl-C and SIGTERM during training: stop at the next step boundary, not wherever we are.

While a StopSignals is active, SIGINT and SIGTERM only note that a stop was asked for; the
training loop polls `requested()` between steps, saves a checkpoint and stops. A second Ctrl-C
does not wait: it raises KeyboardInterrupt at once (the last checkpoint stays as it was).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager that turns SIGINT / SIGTERM into a stop request."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal's number
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can we handle
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _note(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = number
