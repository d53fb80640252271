"""Keep a library's log storms readable: one line per message template per window."""

from __future__ import annotations

import logging
import time


class _RepeatLimiter(logging.Filter):
    """At most one record per message template per ``window`` seconds.

    While a broker is unreachable, aiokafka's metadata synchroniser retries without
    backoff and logs every failure: thousands of identical ERROR lines a second.  One
    line per window (saying how many were held back) tells the operator as much.
    """

    def __init__(self, window: float = 5.0) -> None:
        super().__init__()
        self.window = window
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        last, held = self._last.get(key, (0.0, 0))
        if now - last < self.window:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} similar lines held back]"
        return True


def limit_library_repeats() -> None:
    """Install the repeat limiter on aiokafka's chattiest logger (once)."""
    chatty = logging.getLogger("aiokafka")
    if not any(isinstance(f, _RepeatLimiter) for f in chatty.filters):
        chatty.addFilter(_RepeatLimiter())
