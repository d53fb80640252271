"""`consumergen verify`: prove that the database matches the events topic.

Exit 0 when clean, 1 on any difference (the report lists them; consumer UUIDs are the
operator's data on stdout, not log lines), 2 for a bad argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from service.cli._common import EXIT_PROBLEM, database_url_option, settings_from
from service.cli._operator import progress_for, run, stdout_console
from service.config import Settings
from service.domain.errors import ConfigurationError
from service.replay.ranges import RangeSpec
from service.replay.report import UUID_WIDTH, summary_table
from service.replay.sources import ArchiveSource, Source, TopicSource
from service.replay.verify import VerifyReport, verify
from service.store.dialects import DATABASE_URL_VARIABLE, dialect_for_url
from service.store.engine import create_engine
from service.store.migrate import ensure_schema_current


@click.command("verify")
@click.option(
    "--archive",
    "archives",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="Rebuild from this JSONL archive (repeatable, replayed in order). With --archive "
    "the topic is not read unless --with-topic is given.",
)
@click.option(
    "--with-topic", is_flag=True, help="With --archive: also replay the topic, after the archives."
)
@click.option(
    "--scratch-url",
    help="Rebuild into this empty database (default: a temporary SQLite file).",
)
@click.option("--strict", is_flag=True, help="Count pruned tombstones as differences too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Differences listed in the text report.",
)
@click.option("--bootstrap-server", help="Kafka host:port[,...] (CONSUMERGEN_BOOTSTRAP_SERVERS).")
@click.option("--topic", help="Events topic (CONSUMERGEN_TOPIC).")
@database_url_option
@click.pass_context
def command(
    ctx: click.Context,
    archives: tuple[Path, ...],
    with_topic: bool,
    scratch_url: str | None,
    strict: bool,
    as_json: bool,
    limit: int,
    bootstrap_server: str | None,
    topic: str | None,
    database_url: str | None,
) -> None:
    """Rebuild the expected state from the log (events topic and/or archives) in a
    scratch database with the daemon's apply path, and diff it against the database."""
    if with_topic and not archives:
        raise click.UsageError("--with-topic only applies with --archive")
    if scratch_url is not None:
        try:
            dialect_for_url(scratch_url)
        except ConfigurationError as exc:
            message = str(exc).replace(f"{DATABASE_URL_VARIABLE}: ", "")
            raise click.BadParameter(message, param_hint="--scratch-url") from None
    settings = settings_from(
        ctx, bootstrap_servers=bootstrap_server, topic=topic, database_url=database_url
    )
    if scratch_url is not None and scratch_url == settings.database_url:
        raise click.BadParameter("is the live database", param_hint="--scratch-url")
    report = run(
        "verify", _main(settings, list(archives), with_topic or not archives, scratch_url, strict)
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        _print(report, limit)
    if not report.clean:
        raise SystemExit(EXIT_PROBLEM)


async def _main(
    settings: Settings,
    archives: list[Path],
    use_topic: bool,
    scratch_url: str | None,
    strict: bool,
) -> VerifyReport:
    batch = settings.batch_max_events
    sources: list[Source] = []
    for path in archives:
        archive = ArchiveSource(path, settings.topic, RangeSpec(from_beginning=True), batch)
        archive.scan()
        sources.append(archive)
    progress, _ = progress_for()
    live = create_engine(settings, read_only=True)  # the live database is only read
    try:
        await ensure_schema_current(live)
        if not use_topic:
            return await verify(
                sources,
                settings=settings,
                live=live,
                scratch_url=scratch_url,
                strict=strict,
                progress=progress,
            )
        spec = RangeSpec(from_beginning=True)
        async with TopicSource(settings, settings.topic, spec, batch) as topic_source:
            return await verify(
                [*sources, topic_source],
                settings=settings,
                live=live,
                scratch_url=scratch_url,
                strict=strict,
                progress=progress,
            )
    finally:
        await live.dispose()


def _print(report: VerifyReport, limit: int) -> None:
    console = stdout_console()
    rebuild = summary_table(report.rebuild)
    rebuild.title = "rebuild of the expected state"
    console.print(rebuild)
    problems = report.problems
    console.print(
        f"compared {report.compared:,} consumers: "
        + (
            "[bold green]clean[/]"
            if report.clean
            else f"[bold red]{len(problems):,} differences[/]"
        )
    )
    if report.pruned_tombstones:
        console.print(
            f"{report.pruned_tombstones:,} tombstones are in the log but not in the database "
            "(pruned by `db prune`; --strict counts them)"
        )
    if report.inbox_pruned:
        console.print(
            f"{report.inbox_pruned:,} consumers have fewer applied inbox rows than their "
            "generation (inbox rows pruned)"
        )
    if not problems or not limit:
        return
    table = Table(
        title="differences" + (f" (first {limit})" if len(problems) > limit else ""),
        title_justify="left",
    )
    table.add_column("consumer", no_wrap=True, min_width=UUID_WIDTH)  # never cut: copyable
    for column in ("kind", "field", "expected (log)", "live (database)"):
        table.add_column(column, overflow="fold")
    for difference in problems[:limit]:
        fields = difference.fields or {"": ("", "")}
        for name, (expected, live) in fields.items():
            table.add_row(difference.uuid, difference.kind, name, _text(expected), _text(live))
    console.print(table)


def _text(value: object) -> str:
    return "-" if value is None else str(value)
