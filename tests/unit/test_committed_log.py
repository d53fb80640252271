"""The committed batches' INFO line (``service.daemon.committed_log``): a partition's
batches within a second share one line, and every committed batch is in exactly one
line, in offset order, by its partition's next interval or the stop at the latest."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from service.daemon.committed_log import CommittedLog
from service.testing.polling import poll

INTERVAL = 0.2


class Lines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __call__(self, **fields: Any) -> None:
        self.lines.append(fields)

    def of(self, partition: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["partition"] == partition]


def _batch(log: CommittedLog, partition: str, first: int, last: int, **outcomes: int) -> None:
    log.committed(partition, first, last, last - first + 1, outcomes, seconds=0.001 * first)


async def test_the_first_batch_is_logged_at_once_as_before() -> None:
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    _batch(log, "events/0", 0, 2, applied=2, **{"rejected:consumer_exists": 1})
    assert lines.lines == [
        {
            "partition": "events/0",
            "first_offset": 0,
            "last_offset": 2,
            "batches": 1,
            "events": 3,
            "outcomes": {"applied": 2, "rejected:consumer_exists": 1},
            "seconds": 0.0,
        }
    ]


async def test_batches_within_the_interval_share_one_line_when_it_is_up() -> None:
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    _batch(log, "events/0", 0, 0, applied=1)
    for offset in range(1, 6):
        _batch(log, "events/0", offset, offset, applied=1)
    _batch(log, "events/0", 6, 7, applied=1, **{"invalid:not_json": 1})
    assert len(lines.lines) == 1  # held: the partition had its line within the interval
    await poll(lambda: len(lines.lines) == 2, 10, "the held batches' line", every=0.01)
    assert lines.lines[1] == {
        "partition": "events/0",
        "first_offset": 1,
        "last_offset": 7,
        "batches": 6,
        "events": 7,
        "outcomes": {"applied": 6, "invalid:not_json": 1},
        "seconds": 0.006,
    }


async def test_partitions_are_apart_and_a_quiet_partition_is_logged_at_once() -> None:
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    _batch(log, "events/0", 0, 0, applied=1)
    _batch(log, "events/1", 0, 0, applied=1)  # another partition: its own first line
    assert [line["partition"] for line in lines.lines] == ["events/0", "events/1"]
    await asyncio.sleep(INTERVAL * 1.5)  # a quiet interval (nothing held: no line due)
    assert len(lines.lines) == 2
    _batch(log, "events/0", 1, 1, applied=1)
    assert len(lines.lines) == 3 and lines.lines[2]["first_offset"] == 1


async def test_after_a_held_line_the_next_quiet_batch_is_logged_at_once_again() -> None:
    """The timer that wrote a held line is gone with it: a batch after the next quiet
    interval is logged at once (not held until the stop), as after any quiet spell."""
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    _batch(log, "events/0", 0, 0, applied=1)
    _batch(log, "events/0", 1, 1, applied=1)  # held
    await poll(lambda: len(lines.lines) == 2, 10, "the held batch's line", every=0.01)
    await asyncio.sleep(INTERVAL * 1.5)  # quiet: the next line is not due
    _batch(log, "events/0", 2, 2, applied=1)
    assert [line["first_offset"] for line in lines.lines] == [0, 1, 2]


class Clock:
    """A monotonic clock the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_interval_runs_from_each_line_the_stops_line_too() -> None:
    """Read on a monotonic clock whose origin is arbitrary (near 0 just after the machine
    booted): the first batch is logged at once at any reading; a batch a whole interval
    after the last line, at once too; one within it is held.  A stop's line is a line
    like another: the interval runs from it."""
    lines, clock = Lines(), Clock()
    log = CommittedLog(lines, interval=1.0, clock=clock)
    _batch(log, "events/0", 0, 0, applied=1)
    assert len(lines.lines) == 1  # at once, the clock at 0
    clock.now = 1.0
    _batch(log, "events/0", 1, 1, applied=1)
    assert len(lines.lines) == 2  # one interval after the last line: at once
    clock.now = 1.5
    _batch(log, "events/0", 2, 2, applied=1)
    assert len(lines.lines) == 2  # within it: held
    log.flush()
    assert [line["first_offset"] for line in lines.lines] == [0, 1, 2]
    clock.now = 2.0
    _batch(log, "events/0", 3, 3, applied=1)
    assert len(lines.lines) == 3  # within the interval of the stop's line: held
    log.flush()
    assert [line["first_offset"] for line in lines.lines] == [0, 1, 2, 3]


async def test_a_stop_writes_what_is_held_and_nothing_comes_later() -> None:
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    _batch(log, "events/0", 0, 0, applied=1)
    _batch(log, "events/0", 1, 4, applied=4)
    _batch(log, "events/2", 0, 0, applied=1)
    _batch(log, "events/2", 1, 1, applied=1)
    log.flush()
    assert [
        (line["partition"], line["first_offset"], line["last_offset"]) for line in lines.lines
    ] == [
        ("events/0", 0, 0),
        ("events/2", 0, 0),
        ("events/0", 1, 4),
        ("events/2", 1, 1),
    ]
    await asyncio.sleep(INTERVAL * 1.5)  # the timers were cancelled: no second copy
    assert len(lines.lines) == 4


async def test_every_batch_is_in_exactly_one_line_in_offset_order() -> None:
    lines = Lines()
    log = CommittedLog(lines, interval=0.02)
    offset = {"events/0": 0, "events/1": 0}
    for step in range(300):
        partition = f"events/{step % 2}"
        size = 1 + step % 3
        _batch(log, partition, offset[partition], offset[partition] + size - 1, applied=size)
        offset[partition] += size
        if step % 10 == 0:
            await asyncio.sleep(0.005)
    log.flush()
    for partition, end in offset.items():
        covered = [(line["first_offset"], line["last_offset"]) for line in lines.of(partition)]
        # the lines tile the offsets: each starts where the previous one ended
        assert covered[0][0] == 0 and covered[-1][1] == end - 1
        assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(covered))
        assert sum(line["events"] for line in lines.of(partition)) == end
        assert sum(line["outcomes"]["applied"] for line in lines.of(partition)) == end
    assert sum(line["batches"] for line in lines.lines) == 300
    assert len(lines.lines) < 300  # some were shared


async def test_the_lines_seconds_are_the_slowest_batchs_to_a_tenth_of_a_millisecond() -> None:
    """The line's ``seconds`` is its slowest batch's, rounded to 0.1 ms: precise enough to
    tell a slow batch, short enough to read."""
    lines = Lines()
    log = CommittedLog(lines, interval=INTERVAL)
    log.committed("events/0", 0, 0, 1, {"applied": 1}, seconds=0.123456)
    assert lines.lines[0]["seconds"] == 0.1235
