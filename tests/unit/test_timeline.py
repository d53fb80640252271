"""The per-event timeline (``service.daemon.timeline``) through a worker over fakes.

What must hold: with a timeline on the stage clock, every record of a committed batch
is stamped at each boundary once its batch crossed it, in the order the worker crosses
them (fetched, admitted, transaction committed, acknowledged, offset committed); with
``every`` N only offsets divisible by N are stamped; the file written at stop reads
back as it was stamped.  Off (the default), nothing is kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.apply.applier import Applier
from service.daemon.timeline import BOUNDARIES, Timeline, read_timeline
from tests.unit.test_partition_worker import (
    FakeHost,
    _consumer,
    _event,
    _record,
    _run,
)


async def test_every_record_is_stamped_at_each_boundary_in_order(
    applier: Applier,
    tmp_path: Path,
) -> None:
    host = FakeHost(applier)
    timeline = Timeline(tmp_path / "stamps.csv")
    host.metrics.stages.timeline = timeline
    records = [_event(0, _consumer(1)), _record(1, b"not json"), _event(2, _consumer(2))]
    await _run(host, records)
    assert host.fatal_errors == []
    timeline.write()
    stamps = read_timeline(tmp_path / "stamps.csv")
    assert set(stamps) == {(0, 0), (0, 1), (0, 2)}
    for event in stamps.values():
        assert list(event) == list(BOUNDARIES)  # every boundary, first stamp first
        moments = [event[boundary] for boundary in BOUNDARIES]
        assert moments == sorted(moments)


async def test_a_sample_stamps_only_offsets_divisible_by_every(
    applier: Applier,
    tmp_path: Path,
) -> None:
    host = FakeHost(applier)
    timeline = Timeline(tmp_path / "stamps.csv", every=3)
    host.metrics.stages.timeline = timeline
    await _run(host, [_event(offset, _consumer(offset)) for offset in range(7)])
    timeline.write()
    assert sorted(read_timeline(tmp_path / "stamps.csv")) == [(0, 0), (0, 3), (0, 6)]


async def test_off_by_default(applier: Applier) -> None:
    host = FakeHost(applier)
    assert host.metrics.stages.timeline is None
    await _run(host, [_event(0, _consumer(1))])
    assert host.commits and host.fatal_errors == []


def test_stamps_stop_at_the_bound_and_the_file_names_its_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run keeps its first stamps: once ``MAX_ROWS`` are kept, nothing more (a
    call that starts below the bound is kept whole); the file's first line names the
    columns."""
    monkeypatch.setattr("service.daemon.timeline.MAX_ROWS", 3)
    timeline = Timeline(tmp_path / "timeline.csv")
    timeline.stamp("fetched", [_record(0, b"x"), _record(1, b"x"), _record(2, b"x")])
    timeline.stamp("fetched", [_record(3, b"x")])
    assert timeline.rows == 3
    timeline.write()
    lines = (tmp_path / "timeline.csv").read_text().splitlines()
    assert lines[0] == "partition,offset,boundary,time" and len(lines) == 4
