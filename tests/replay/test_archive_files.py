"""Archive files without a broker: ``write_archive`` (written whole or not at all,
undecodable records reported and skipped) and ``ArchiveSource`` (every line checked
before the first is replayed, the range applied line by line, chunks of the batch size)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.replay import archive as archive_module
from service.replay.archive import write_archive
from service.replay.ranges import RangeSpec
from service.replay.records import SourceRecord, to_archive_line
from service.replay.sources import ArchiveSource, SourceError, TopicSource
from tests.log_lines import logged
from tests.replay.fakes import ListSource, RecordingProgress, consumer_id, record, upsert_doc


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def topic_like(source: ListSource) -> TopicSource:
    """``write_archive`` reads a source's total, description and batches only."""
    return cast(TopicSource, source)


def source() -> ListSource:
    return ListSource(
        [
            [
                record(3, upsert_doc(consumer_id(1)), timestamp_ms=1_000),
                record(4, value=None, key=None, undecodable="header #1 name is not UTF-8"),
                record(5, upsert_doc(consumer_id(2)), partition=1),
            ],
            [record(9, value=b"\xff raw", key=b"k"), record(6, value=b"{}", partition=1)],
        ],
        name="topic events (0:[3,10), 1:[5,7))",
    )


async def test_the_archive_is_every_decodable_record_in_read_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    made = source()
    destination = tmp_path / "events.jsonl"
    progress = RecordingProgress()
    report = await write_archive(topic_like(made), destination, progress)
    written = [r for chunk in made.chunks for r in chunk if r.undecodable is None]
    assert destination.read_text(encoding="utf-8") == "".join(
        to_archive_line(r) + "\n" for r in written
    )
    assert names(tmp_path) == ["events.jsonl"]  # no temporary left
    assert report.records == 4
    assert report.partitions == {0: (3, 9), 1: (5, 6)}
    assert report.undecodable == [(0, 4, "header #1 name is not UTF-8")]
    assert 0 <= report.seconds < 60
    assert progress.calls == [
        ("start", 5, "topic events (0:[3,10), 1:[5,7))"),
        ("advance", 3),
        ("advance", 2),
        ("stop",),
    ]
    [warning] = [e for e in logged(caplog) if e["event"] == "archive_record_undecodable_skipped"]
    assert (warning["topic"], warning["partition"], warning["offset"]) == ("events", 0, 4)
    assert warning["error"] == "header #1 name is not UTF-8"
    [done] = [e for e in logged(caplog) if e["event"] == "archive_written"]
    assert done["records"] == 4


async def test_without_a_destination_the_archive_goes_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = source()
    report = await write_archive(topic_like(made), None, RecordingProgress())
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["offset"] for line in out] == [3, 5, 9, 6]
    assert report.records == 4
    assert names(tmp_path) == []


async def test_an_interrupted_archive_leaves_no_file(tmp_path: Path) -> None:
    made = source()
    made.fail_after = ConnectionResetError("broker gone")
    destination = tmp_path / "events.jsonl"
    destination_before = tmp_path / "kept.jsonl"
    destination_before.write_text("an older archive\n")
    progress = RecordingProgress()
    with pytest.raises(ConnectionResetError):
        await write_archive(topic_like(made), destination, progress)
    assert names(tmp_path) == ["kept.jsonl"]
    assert progress.calls[-1] == ("stop",)


async def test_an_interrupted_archive_keeps_an_earlier_file_of_that_name(tmp_path: Path) -> None:
    made = source()
    made.fail_after = ConnectionResetError("broker gone")
    destination = tmp_path / "events.jsonl"
    destination.write_text("the last complete archive\n")
    with pytest.raises(ConnectionResetError):
        await write_archive(topic_like(made), destination, RecordingProgress())
    assert destination.read_text() == "the last complete archive\n"
    assert names(tmp_path) == ["events.jsonl"]


# --- reading archives ------------------------------------------------------------------


def archive(tmp_path: Path, lines: list[str | bytes], name: str = "a.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    )
    return path


def line(partition: int, offset: int, **extra: Any) -> str:
    doc: dict[str, Any] = {"partition": partition, "offset": offset, "value": {"n": offset}}
    doc.update(extra)
    return json.dumps(doc)


async def chunks(source: ArchiveSource) -> list[list[tuple[int, int]]]:
    return [[(r.partition, r.offset) for r in chunk] async for chunk in source.batches()]


async def test_an_archive_is_read_in_file_order_in_chunks_of_the_batch_size(
    tmp_path: Path,
) -> None:
    path = archive(tmp_path, [line(0, i) for i in range(5)])
    source = ArchiveSource(path, "events", RangeSpec(from_beginning=True), batch_size=2)
    assert source.describe() == f"archive {path}"
    assert source.scan() == 5 and source.total == 5
    assert await chunks(source) == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)]]
    exact = ArchiveSource(
        archive(tmp_path, [line(0, i) for i in range(4)], "b.jsonl"),
        "events",
        RangeSpec(from_beginning=True),
        batch_size=2,
    )
    assert await chunks(exact) == [[(0, 0), (0, 1)], [(0, 2), (0, 3)]]


async def test_blank_lines_are_skipped_and_the_default_topic_filled_in(tmp_path: Path) -> None:
    path = archive(tmp_path, ["", line(1, 7), "   ", line(1, 8, topic="elsewhere")])
    source = ArchiveSource(path, "events", RangeSpec(from_beginning=True), batch_size=10)
    assert source.scan() == 2
    [[first, second]] = [chunk async for chunk in source.batches()]
    assert (first.topic, first.value) == ("events", b'{"n":7}')
    assert second.topic == "elsewhere"


async def test_the_range_is_applied_to_every_line(tmp_path: Path) -> None:
    lines = [line(p, o, timestamp_ms=1_000 * o) for p in (0, 1) for o in range(4)]
    path = archive(tmp_path, lines)
    spec = RangeSpec.from_options(from_offset=["1:1"], to_offset=["1:2"])
    source = ArchiveSource(path, "events", spec, batch_size=10)
    assert source.scan() == 2
    assert await chunks(source) == [[(1, 1), (1, 2)]]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([line(0, 0), line(0, 1), "{broken"], "line 3: not JSON ("),
        ([line(0, 0), b"\xff\xfe", line(0, 2)], "line 2: not UTF-8 text"),
        ([line(0, 0), "", '{"offset": 1, "value": null}'], 'line 3: "partition" must be'),
    ],
)
async def test_a_bad_line_is_named_with_its_number_before_anything_is_read(
    tmp_path: Path, lines: list[str | bytes], message: str
) -> None:
    path = archive(tmp_path, lines)
    source = ArchiveSource(path, "events", RangeSpec(from_beginning=True), batch_size=1)
    with pytest.raises(SourceError) as refused:
        source.scan()
    assert str(refused.value).startswith(f"{path} {message}")
    assert refused.value.__suppress_context__


async def test_a_missing_archive_is_named() -> None:
    path = Path("/nonexistent/archive.jsonl")
    source = ArchiveSource(path, "events", RangeSpec(from_beginning=True), batch_size=1)
    with pytest.raises(SourceError, match=r"^cannot read /nonexistent/archive.jsonl: No such file"):
        source.scan()


def test_a_record_read_back_is_the_record_archived(tmp_path: Path) -> None:
    original = SourceRecord("events", 2, 40, 1_714_564_800_000, b"k", b'{"a":1}', (("h", b"v"),))
    path = archive(tmp_path, [to_archive_line(original)])
    source = ArchiveSource(path, "other", RangeSpec(from_beginning=True), batch_size=1)
    assert list(source._records()) == [original]


async def test_the_archive_is_written_under_a_hidden_name_next_to_it_until_complete(
    tmp_path: Path,
) -> None:
    """Same folder (so the rename is atomic), a dot name (so no glob of *.jsonl takes
    the half-written file for an archive)."""
    seen: list[list[str]] = []

    class Watched(ListSource):
        async def batches(self):  # type: ignore[no-untyped-def]
            async for chunk in super().batches():
                seen.append(names(tmp_path))
                yield chunk

    made = Watched(source().chunks, name="topic events")
    destination = tmp_path / "events.jsonl"
    await write_archive(topic_like(made), destination, RecordingProgress())
    assert len(seen) == 2 and all(len(names_then) == 1 for names_then in seen)
    assert seen[0][0].startswith(".events.jsonl.") and seen[1] == seen[0]
    assert names(tmp_path) == ["events.jsonl"]


async def test_the_archive_s_log_line_gives_its_time_in_milliseconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    readings = iter([100.0, 100.123456])
    monkeypatch.setattr(archive_module, "time", SimpleNamespace(monotonic=lambda: next(readings)))
    report = await write_archive(topic_like(source()), tmp_path / "a.jsonl", RecordingProgress())
    assert report.seconds == pytest.approx(0.123456)
    [done] = [e for e in logged(caplog) if e["event"] == "archive_written"]
    assert (done["records"], done["seconds"]) == (4, 0.123)


async def test_an_archive_s_times_are_filtered_by_the_time_range(tmp_path: Path) -> None:
    lines = [line(0, o, timestamp_ms=1_000 * o) for o in range(5)] + [line(0, 9)]
    spec = RangeSpec(from_timestamp=1_000, to_timestamp=3_000)
    source = ArchiveSource(archive(tmp_path, lines), "events", spec, batch_size=10)
    assert source.total == 0  # until scanned
    assert source.scan() == 3  # 1 s, 2 s, and the line without a time
    assert await chunks(source) == [[(0, 1), (0, 2), (0, 9)]]
