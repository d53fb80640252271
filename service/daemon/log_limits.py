"""Keep a library's log storms readable: one line per message template per window, and
no ERROR for what is the normal first seconds of a consumer group.

aiokafka logs at ERROR every retriable failure of its group coordinator lookup; on a
fresh broker that is how each group starts (the ``__consumer_offsets`` topic is created
on the first lookup, which answers "coordinator not available" until it exists), so the
first ``run --local`` used to print a column of red lines before working normally.
Those records become INFO: readiness (no partitions, not ready) is the signal that
something is wrong when it lasts; a non-retriable error keeps its level.
"""

from __future__ import annotations

import logging
import time

from aiokafka.errors import KafkaError

#: aiokafka's group coordinator logger and its lookup-failure template.
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
LOOKUP_FAILED = "Group Coordinator Request failed: %s"


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


class _RetriableLookupIsInfo(logging.Filter):
    """A coordinator lookup that failed with a retriable Kafka error is INFO, not ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == LOOKUP_FAILED and record.levelno > logging.INFO:
            error = record.args[0] if isinstance(record.args, tuple) and record.args else None
            if isinstance(error, KafkaError) and error.retriable:
                record.levelno, record.levelname = logging.INFO, "INFO"
                return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def limit_library_repeats() -> None:
    """Install the filters on aiokafka's chattiest loggers (once).  A logger's filters
    see only the records logged on it, so each logger gets its own."""
    for name in ("aiokafka", COORDINATOR_LOGGER):
        chatty = logging.getLogger(name)
        if name == COORDINATOR_LOGGER and not any(
            isinstance(f, _RetriableLookupIsInfo) for f in chatty.filters
        ):
            chatty.addFilter(_RetriableLookupIsInfo())
        if not any(isinstance(f, _RepeatLimiter) for f in chatty.filters):
            chatty.addFilter(_RepeatLimiter())
