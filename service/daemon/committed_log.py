"""The committed batches' INFO line: one per partition at most every ``interval`` seconds.

Under light load every batch is small (at 1,000 events/s on six partitions most
batches hold one event), so one line per batch was a line per event: a log flood no
operator reads, and per batch the CPU of structlog, the redacting formatter and a
write (issue 22's profile).  So a partition's batches committed within ``interval`` of
its last line share one line; the first batch after a quiet ``interval`` is logged at
once, as before, and what accumulated behind it is logged when the interval is up
(a timer on the loop) or at a stop (``flush``), never later.  The metrics
(``consumergen_events_total`` and the others) are still counted per batch.

The line (``batch committed``) says which offsets it covers (``first_offset`` to
``last_offset``: every batch committed between them, in order), how many ``batches``
and ``events``, the ``outcomes`` by kind and reason, and ``seconds``: the longest any
of its batches took from being taken to its offset commit.  No UUID: counts only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

#: The shortest time between two lines of one partition.
INTERVAL: Final = 1.0


@dataclass(slots=True)
class _Pending:
    """The batches of one partition committed since its last line."""

    first_offset: int
    last_offset: int = -1
    batches: int = 0
    events: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


class CommittedLog:
    """``committed(...)`` after each committed batch; ``flush()`` at a stop.  Each line
    goes to ``write`` as keyword fields (the host's ``log.info`` of its event)."""

    def __init__(
        self,
        write: Callable[..., Any],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write_line = write
        self.interval = interval
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        #: When each partition's last line was written (the clock's time).
        self._last_line: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def committed(
        self,
        partition: str,
        first_offset: int,
        last_offset: int,
        events: int,
        outcomes: dict[str, int],
        seconds: float,
    ) -> None:
        pending = self._pending.get(partition)
        if pending is None:
            pending = self._pending[partition] = _Pending(first_offset)
        pending.last_offset = last_offset
        pending.batches += 1
        pending.events += events
        pending.seconds = max(pending.seconds, seconds)
        counts = pending.outcomes
        for outcome, n in outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + n
        if partition in self._timers:
            return  # a line is due already; it will carry this batch
        now = self._clock()
        due = self._last_line.get(partition, -self.interval) + self.interval
        if now >= due:
            self._write(partition, now)
        else:
            loop = asyncio.get_running_loop()
            self._timers[partition] = loop.call_later(due - now, self._due, partition)

    def flush(self) -> None:
        """Write every partition's pending line now (at a stop)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        now = self._clock()
        for partition in list(self._pending):
            self._write(partition, now)

    def _due(self, partition: str) -> None:
        self._timers.pop(partition, None)
        self._write(partition, self._clock())

    def _write(self, partition: str, now: float) -> None:
        pending = self._pending.pop(partition, None)
        if pending is None:
            return
        self._last_line[partition] = now
        self._write_line(
            partition=partition,
            first_offset=pending.first_offset,
            last_offset=pending.last_offset,
            batches=pending.batches,
            events=pending.events,
            outcomes=dict(sorted(pending.outcomes.items())),
            seconds=round(pending.seconds, 4),
        )
