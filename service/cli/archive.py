"""`consumergen archive`: dump a topic range to a JSONL archive (the input of replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from service.cli._common import EXIT_PROBLEM, settings_from
from service.cli._operator import progress_for, range_options, range_spec, run
from service.config import Settings
from service.replay.archive import ArchiveReport, write_archive
from service.replay.ranges import RangeSpec
from service.replay.sources import TopicSource


@click.command("archive")
@range_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
    help="The JSONL file to write ('-' = stdout). Written whole or not at all.",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--dlq", is_flag=True, help="Archive the dead-letter topic instead.")
@click.option("--bootstrap-server", help="Kafka host:port[,...] (CONSUMERGEN_BOOTSTRAP_SERVERS).")
@click.option("--topic", help="Events topic (CONSUMERGEN_TOPIC).")
@click.option("--dlq-topic", help="Dead-letter topic (CONSUMERGEN_DLQ_TOPIC).")
@click.pass_context
def command(
    ctx: click.Context,
    /,
    output: Path,
    force: bool,
    dlq: bool,
    bootstrap_server: str | None,
    topic: str | None,
    dlq_topic: str | None,
    **ranges: Any,
) -> None:
    """Dump a range of the events topic (default: all of it) to JSONL, one record per
    line with partition, offset, timestamp, key, value and headers."""
    spec = range_spec(ranges, require_start=False)
    to_stdout = str(output) == "-"
    if not to_stdout:
        if output.exists() and not force:
            raise click.BadParameter(
                f"{output} exists (use --force to replace it)", param_hint="--output"
            )
        if not output.parent.is_dir():
            raise click.BadParameter(f"no such folder: {output.parent}", param_hint="--output")
    settings = settings_from(
        ctx, bootstrap_servers=bootstrap_server, topic=topic, dlq_topic=dlq_topic
    )
    name = settings.dlq_topic if dlq else settings.topic
    report = run("archive", _main(settings, name, spec, None if to_stdout else output))
    where = "stdout" if to_stdout else str(output)
    click.echo(
        f"archived {report.records} records of {name} to {where} in {report.seconds:.2f} s",
        err=True,
    )
    for partition, (first, last) in sorted(report.partitions.items()):
        click.echo(f"  partition {partition}: offsets {first}..{last}", err=True)
    if report.undecodable:
        click.echo(
            f"skipped {len(report.undecodable)} record(s) the Kafka client cannot decode "
            "(not in the archive):",
            err=True,
        )
        for partition, offset, error in report.undecodable:
            click.echo(f"  partition {partition} offset {offset}: {error}", err=True)
        raise SystemExit(EXIT_PROBLEM)


async def _main(
    settings: Settings, topic: str, spec: RangeSpec, output: Path | None
) -> ArchiveReport:
    progress, _ = progress_for()
    async with TopicSource(settings, topic, spec, settings.batch_max_events) as source:
        return await write_archive(source, output, progress)
