"""Stalls, seen rather than guessed (DESIGN.md, *Stalls*): a fetch loop that has not
polled, or an assigned partition with lag that is not paused and whose committed offset
has not moved, for longer than ``CONSUMERGEN_STALL_SECONDS``.

A stall is what no other probe sees: the broker and the database answer, no partition
is paused, /readyz says 200, and yet a partition sits still (issue 21's fault run: five
and a half minutes, until aiokafka's poll-interval limit made the consumer leave the
group).  A stall fails /livez, so the platform restarts the process, and shows in
``consumergen_stalled_partitions`` and ``consumergen_fetch_loop_stalled``.

What is *not* a stall: a paused partition (backpressure: its worker has enough queued;
an infrastructure failure: it is retrying, and /readyz says so), a partition with no
lag (idle), the fetch loop waiting while the broker is away (the clients are parked,
``service.daemon.outage``).  A partition's clock starts again whenever it was paused,
idle, reassigned (a new worker) or committed.

The rules here are pure (a clock is passed in); ``service.daemon.probes`` feeds them
each probe interval and publishes the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass(frozen=True, slots=True)
class PartitionView:
    """One assigned partition as the probe sees it."""

    #: The worker that owns it (identity only: a new worker is a new assignment).
    owner: object
    #: The group's committed offset as far as known (None: not known yet).
    committed: int | None
    #: The partition's end offset as far as known (None: not known yet).
    end: int | None
    #: Paused at the consumer for any reason (backpressure, infrastructure).
    paused: bool


@dataclass(frozen=True, slots=True)
class _Since:
    owner: object
    committed: int | None
    at: float


@dataclass
class StallWatch:
    """Remembers since when each partition and the fetch loop stood still."""

    #: Seconds of standing still that make a stall.
    bound: float
    #: ``time.monotonic()`` of the fetch loop's latest poll (None: not polling yet).
    last_poll: float | None = None
    _since: dict[TopicPartition, _Since] = field(default_factory=dict)

    def polled(self, now: float) -> None:
        """The fetch loop asked the consumer for records."""
        self.last_poll = now

    def fetch_loop_stalled(self, now: float, *, online: bool) -> bool:
        """Not polled for longer than the bound, while the clients are not parked."""
        if not online:
            self.last_poll = None  # the clock starts again once the broker is back
            return False
        return self.last_poll is not None and now - self.last_poll > self.bound

    def stalled_partitions(
        self, now: float, partitions: Mapping[TopicPartition, PartitionView]
    ) -> list[TopicPartition]:
        """The partitions that had lag, were not paused and did not commit for longer
        than the bound (``partitions``: every assigned one, as seen ``now``)."""
        stalled = []
        for tp, view in partitions.items():
            since = self._since.get(tp)
            lagging = (
                view.committed is not None and view.end is not None and view.end > view.committed
            )
            if (
                since is None
                or not lagging
                or view.paused
                or since.owner is not view.owner
                or since.committed != view.committed
            ):
                self._since[tp] = _Since(view.owner, view.committed, now)
                continue
            if now - since.at > self.bound:
                stalled.append(tp)
        for gone in set(self._since) - set(partitions):
            del self._since[gone]
        return sorted(stalled, key=lambda tp: (tp.topic, tp.partition))
