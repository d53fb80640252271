"""Wall-clock stamps of a sample of events at each of the daemon's boundaries.

Where an event's milliseconds go cannot be read from the stage clocks (``stages``):
they add seconds per stage over every batch, while a latency is one event's path
through fetch, admission, the transaction, the acknowledged outcome and the offset
commit, and partly waits *between* stages.  So a benchmark turns this on
(``CONSUMERGEN_TIMELINE_FILE``) and joins the daemon's stamps with its own (produced,
reply in hand) by the event's partition and offset: both processes read the same
machine's clock (``time.time``).

Off by default, and then it costs one attribute check per batch boundary
(``StageClock.timeline is None``).  On, it keeps rows in memory (bounded) and writes
them once, when the daemon stops: no file I/O on the critical path it measures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

#: The daemon's boundaries, in the order an event crosses them.
BOUNDARIES: Final = (
    "fetched",  # handed from the fetch loop to its partition's worker
    "admitted",  # decoded and validated (its batch's admission done)
    "committed",  # its batch's database transaction committed
    "acknowledged",  # its dead letter / outcome record acknowledged by the broker
    "offset",  # the offset after its batch committed to the group
)

#: At most this many stamps are kept (a long run keeps its first ones).
MAX_ROWS: Final = 2_000_000


class Timeline:
    """Stamps of one event in ``every`` (by offset), written to ``path`` at ``write``."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path = path
        self.every = max(1, every)
        self._rows: list[tuple[int, int, int, float]] = []

    def stamp(self, boundary: str, records: Iterable[ConsumerRecord]) -> None:
        """Every sampled record of ``records`` crossed ``boundary`` now."""
        now = time.time()
        index = BOUNDARIES.index(boundary)
        every = self.every
        rows = self._rows
        if len(rows) >= MAX_ROWS:
            return
        for record in records:
            if record.offset % every == 0:
                rows.append((record.partition, record.offset, index, now))

    @property
    def rows(self) -> int:
        return len(self._rows)

    def write(self) -> None:
        """``partition,offset,boundary,unix seconds`` lines (the header names them)."""
        lines = [f"{p},{o},{BOUNDARIES[b]},{t:.6f}\n" for p, o, b, t in self._rows]
        self.path.write_text("partition,offset,boundary,time\n" + "".join(lines))


def read_timeline(path: Path) -> dict[tuple[int, int], dict[str, float]]:
    """A written timeline: (partition, offset) -> boundary -> unix seconds (the first
    stamp of a boundary wins: a batch retried after an outage is stamped again)."""
    stamps: dict[tuple[int, int], dict[str, float]] = {}
    for line in path.read_text().splitlines()[1:]:
        partition, offset, boundary, moment = line.split(",")
        event = stamps.setdefault((int(partition), int(offset)), {})
        event.setdefault(boundary, float(moment))
    return stamps
