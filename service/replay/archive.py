"""Dump a topic range to a JSONL archive (the format ``service.replay.records`` defines).

The file is written next to its destination under a temporary name and renamed into
place only when the whole range was read, so an interrupted archive never leaves a
truncated file that looks complete.

A record the Kafka client cannot decode (``service.kafka.records.UndecodableRecord``:
say a header name that is not UTF-8) is *reported and skipped*: no line is written for
it (an archive line must be a record that replays as what was read, and such a record
cannot be represented faithfully), its coordinates go into ``ArchiveReport.undecodable``
and a warning, and the rest of the range is archived.  The CLI lists them and exits 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from service.replay.records import to_archive_line
from service.replay.runner import Progress
from service.replay.sources import TopicSource

log = structlog.stdlib.get_logger(__name__)


@dataclass
class ArchiveReport:
    records: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    #: (partition, offset, what could not be read) of every record skipped as undecodable.
    undecodable: list[tuple[int, int, str]] = field(default_factory=list)


async def write_archive(
    source: TopicSource, destination: Path | None, progress: Progress
) -> ArchiveReport:
    """Write every record of the opened ``source`` to ``destination`` (None: stdout)."""
    report = ArchiveReport()
    started = time.monotonic()
    if destination is None:
        handle = sys.stdout
        temporary: Path | None = None
    else:
        fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        temporary = Path(name)
        handle = os.fdopen(fd, "w", encoding="utf-8")
    progress.start(source.total, source.describe())
    try:
        async for chunk in source.batches():
            for record in chunk:
                if record.undecodable is not None:
                    report.undecodable.append((record.partition, record.offset, record.undecodable))
                    log.warning(
                        "archive_record_undecodable_skipped",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        error=record.undecodable,
                    )
                    continue
                handle.write(to_archive_line(record))
                handle.write("\n")
                report.records += 1
                first, _ = report.partitions.get(record.partition, (record.offset, 0))
                report.partitions[record.partition] = (first, record.offset)
            progress.advance(len(chunk))
        handle.flush()
        if temporary is not None:
            os.fsync(handle.fileno())
            handle.close()
            assert destination is not None
            temporary.replace(destination)
            temporary = None
    finally:
        progress.stop()
        if temporary is not None:
            handle.close()
            temporary.unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    log.info("archive_written", records=report.records, seconds=round(report.seconds, 3))
    return report
