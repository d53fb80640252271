"""`consumergen show`: a consumer's state and its last processed events.

The UUID and the rows are the operator's data, printed on stdout (not logged).  Exit 1
when the database has no row for the consumer, 2 for a malformed UUID or a database
that does not exist (opened read-only: a wrong SQLite path creates nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click
from rich.table import Table

from service.cli._common import EXIT_PROBLEM, database_url_option, settings_from, uuid_parameter
from service.cli._operator import run, stdout_console
from service.config import Settings
from service.domain.consumer import ConsumerState
from service.domain.inbox import ProcessedEvent
from service.store.engine import create_engine
from service.store.migrate import ensure_schema_current
from service.store.reads import get_consumer, recent_events

#: A canonical UUID's length: the event id column is never narrower.
EVENT_ID_WIDTH = 36


@dataclass
class _Found:
    consumer: ConsumerState | None
    events: list[ProcessedEvent]


@click.command("show")
@click.argument("consumer_uuid", metavar="UUID", callback=uuid_parameter)
@click.option(
    "--events",
    "limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the latest inbox rows to list.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@database_url_option
@click.pass_context
def command(
    ctx: click.Context, consumer_uuid: str, limit: int, as_json: bool, database_url: str | None
) -> None:
    """A consumer's current state (generation, owners, tombstone) and its latest
    processed events with their outcomes."""
    settings = settings_from(ctx, database_url=database_url)
    found = run("show", _load(settings, consumer_uuid, limit))
    if as_json:
        click.echo(json.dumps(_document(consumer_uuid, found), ensure_ascii=False))
    else:
        _print(consumer_uuid, found)
    if found.consumer is None:
        raise SystemExit(EXIT_PROBLEM)


async def _load(settings: Settings, consumer_uuid: str, limit: int) -> _Found:
    engine = create_engine(settings, read_only=True)
    try:
        await ensure_schema_current(engine)
        consumer = await get_consumer(engine, consumer_uuid)
        events = await recent_events(engine, consumer_uuid, limit) if limit else []
        return _Found(consumer, events)
    finally:
        await engine.dispose()


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _document(consumer_uuid: str, found: _Found) -> dict[str, Any]:
    c = found.consumer
    doc: dict[str, Any] = {"consumer_uuid": consumer_uuid, "found": c is not None}
    if c is not None:
        doc.update(
            generation=c.generation,
            deleted=c.deleted,
            project_id=c.project_id,
            user_id=c.user_id,
            consumer_type=c.consumer_type,
            last_event_id=c.last_event_id,
            created_at=_time(c.created_at),
            updated_at=_time(c.updated_at),
            deleted_at=_time(c.deleted_at),
        )
    doc["events"] = [
        {
            "event_id": e.event_id,
            "type": None if e.event_type is None else e.event_type.value,
            "outcome": e.outcome.value,
            "reason": None if e.reason is None else e.reason.value,
            "generation_after": e.generation_after,
            "attempts": e.attempts,
            "source": None
            if e.source is None
            else {
                "topic": e.source.topic,
                "partition": e.source.partition,
                "offset": e.source.offset,
            },
            "processed_at": _time(e.processed_at),
        }
        for e in found.events
    ]
    return doc


def _print(consumer_uuid: str, found: _Found) -> None:
    console = stdout_console()
    c = found.consumer
    if c is None:
        click.echo(f"consumergen show: no consumer {consumer_uuid} in the database", err=True)
    else:
        state = f"deleted (tombstone since {_time(c.deleted_at)})" if c.deleted else "live"
        table = Table(title=f"consumer {consumer_uuid}", title_justify="left", show_header=False)
        table.add_column("field", no_wrap=True)
        table.add_column("value", overflow="fold")  # ids wrap whole, never cut
        for name, value in (
            ("state", state),
            ("generation", str(c.generation)),
            ("project", c.project_id),
            ("user", c.user_id),
            ("consumer type", c.consumer_type or "-"),
            ("last event", c.last_event_id),
            ("created", _time(c.created_at)),
            ("updated", _time(c.updated_at)),
        ):
            table.add_row(name, value)
        console.print(table)
    if not found.events:
        if c is not None:
            console.print("no processed events in the inbox (pruned?)")
        return
    events = Table(
        title=f"last {len(found.events)} processed events, newest first", title_justify="left"
    )
    # Never an ellipsis: the event id stays whole on one line (copyable on 80 columns),
    # the other columns fold; --json is the form for scripts.
    events.add_column("processed at", overflow="fold")
    events.add_column("event", no_wrap=True, min_width=EVENT_ID_WIDTH)
    for column in ("type", "outcome", "generation after", "source"):
        events.add_column(column, overflow="fold")
    for e in found.events:
        outcome = e.outcome.value + (f" ({e.reason.value})" if e.reason else "")
        source = (
            "-" if e.source is None else f"{e.source.topic}/{e.source.partition}@{e.source.offset}"
        )
        events.add_row(
            _time(e.processed_at),
            e.event_id,
            "-" if e.event_type is None else e.event_type.value,
            outcome,
            "-" if e.generation_after is None else str(e.generation_after),
            source,
        )
    console.print(events)
