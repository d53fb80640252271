"""`consumergen replay`: re-drive events from the topic, dead-letter topic or an archive.

Through the daemon's own apply path (idempotent, compare-and-swap), so it is safe
while the daemon runs.  Exit 0 when every event settled; 1 when any record was invalid
or any event failed; 2 for a bad argument (nothing read or written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli._common import EXIT_PROBLEM, database_url_option, settings_from, start_tracing
from service.cli._operator import progress_for, range_options, range_spec, run, stdout_console
from service.config import Settings
from service.replay.ranges import RangeSpec
from service.replay.report import changes_table, summary_table
from service.replay.runner import Mode, ReplayReport, replay
from service.replay.sources import ArchiveSource, Source, TopicSource
from service.store.engine import create_engine
from service.store.migrate import ensure_schema_current


@click.command("replay")
@range_options
@click.option(
    "--dlq",
    is_flag=True,
    help="Read the dead-letter topic (default: all of it): re-validate each record and "
    "apply what is valid now.",
)
@click.option(
    "--republish",
    is_flag=True,
    help="With --dlq: put what is valid now back on the events topic (same key and value, "
    "error headers dropped) for the daemon, instead of applying it here.",
)
@click.option(
    "--archive",
    "archive_path",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="Replay a JSONL archive file (from `consumergen archive`); range options filter it.",
)
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 50_000),
    default=None,
    help="Events per transaction (default: CONSUMERGEN_BATCH_MAX_EVENTS).",
)
@click.option(
    "--max-event-bytes",
    type=click.IntRange(min=1024),
    default=None,
    help="Size limit for this run (CONSUMERGEN_MAX_EVENT_BYTES), e.g. after raising it.",
)
@click.option(
    "--show-consumers",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Dry run: list at most this many consumers whose generation would change.",
)
@click.option("--bootstrap-server", help="Kafka host:port[,...] (CONSUMERGEN_BOOTSTRAP_SERVERS).")
@click.option("--topic", help="Events topic (CONSUMERGEN_TOPIC).")
@click.option("--dlq-topic", help="Dead-letter topic (CONSUMERGEN_DLQ_TOPIC).")
@database_url_option
@click.pass_context
def command(
    ctx: click.Context,
    /,
    dlq: bool,
    republish: bool,
    archive_path: Path | None,
    dry_run: bool,
    as_json: bool,
    batch_size: int | None,
    max_event_bytes: int | None,
    show_consumers: int,
    bootstrap_server: str | None,
    topic: str | None,
    dlq_topic: str | None,
    database_url: str | None,
    **ranges: Any,
) -> None:
    """Re-drive events from the events topic, the dead-letter topic (--dlq) or an
    archive file (--archive) through the daemon's idempotent apply path."""
    if dlq and archive_path is not None:
        raise click.UsageError("choose one source: the events topic, --dlq or --archive")
    if republish and not dlq:
        raise click.UsageError("--republish only applies to --dlq")
    spec = range_spec(ranges, require_start=not dlq and archive_path is None)
    settings = settings_from(
        ctx,
        bootstrap_servers=bootstrap_server,
        topic=topic,
        dlq_topic=dlq_topic,
        max_event_bytes=max_event_bytes,
        database_url=database_url,
    )
    start_tracing(ctx, settings)
    if republish:
        mode = Mode.REPUBLISH_DRY_RUN if dry_run else Mode.REPUBLISH
    else:
        mode = Mode.DRY_RUN if dry_run else Mode.APPLY
    size = batch_size or settings.batch_max_events
    report = run("replay", _main(settings, spec, mode, size, dlq, archive_path))
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        console = stdout_console()
        console.print(summary_table(report))
        changes = changes_table(report, show_consumers) if mode is Mode.DRY_RUN else None
        if changes is not None and show_consumers:
            console.print(changes)
    if report.problems:
        raise SystemExit(EXIT_PROBLEM)


async def _main(
    settings: Settings,
    spec: RangeSpec,
    mode: Mode,
    batch_size: int,
    dlq: bool,
    archive_path: Path | None,
) -> ReplayReport:
    if archive_path is not None:
        archive = ArchiveSource(archive_path, settings.topic, spec, batch_size)
        archive.scan()  # every line checked before anything is written
        return await _drive(archive, settings, mode)
    name = settings.dlq_topic if dlq else settings.topic
    async with TopicSource(settings, name, spec, batch_size) as source:
        return await _drive(source, settings, mode)


async def _drive(source: Source, settings: Settings, mode: Mode) -> ReplayReport:
    progress, every = progress_for()
    engine: AsyncEngine | None = None
    if mode in (Mode.APPLY, Mode.DRY_RUN):
        # Never creates a database; a dry run only reads (opened read-only).
        engine = create_engine(settings, read_only=mode is Mode.DRY_RUN, create=False)
    try:
        if engine is not None:
            await ensure_schema_current(engine)
        return await replay(
            source,
            settings=settings,
            mode=mode,
            engine=engine,
            progress=progress,
            progress_log_seconds=every,
        )
    finally:
        if engine is not None:
            await engine.dispose()
