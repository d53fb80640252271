"""`consumergen db`: schema migrations and inbox pruning."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli._common import EXIT_PROBLEM, EXIT_USAGE, database_url_option, settings_from
from service.config import Settings
from service.store.engine import create_engine
from service.store.errors import (
    DatabaseNotFound,
    SchemaNotCurrentError,
    TransientDatabaseError,
    describe,
)
from service.store.migrate import (
    current_revision,
    ensure_schema_current,
    head_revision,
    upgrade_engine,
)
from service.store.prune import PruneResult, parse_duration, prune

T = TypeVar("T")


def _fail(verb: str, message: str, code: int = EXIT_PROBLEM) -> SystemExit:
    click.echo(f"consumergen db {verb}: {message}", err=True)
    return SystemExit(code)


def _run(
    verb: str,
    settings: Settings,
    work: Callable[[AsyncEngine], Awaitable[T]],
    *,
    read_only: bool = False,
) -> T:
    """Run ``work(engine)`` on a fresh engine; database trouble is one line and exit 1,
    a database missing for a read (``read_only``: nothing is created) exit 2."""

    async def main() -> T:
        engine = create_engine(settings, read_only=read_only)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except DatabaseNotFound as exc:
        raise _fail(verb, str(exc), EXIT_USAGE) from None
    except (TransientDatabaseError, SchemaNotCurrentError) as exc:
        raise _fail(verb, str(exc)) from None
    except Exception as exc:
        # Unreachable server, bad credentials, unwritable SQLite folder: say which, once.
        raise _fail(verb, f"database error: {describe(exc)}") from None


@click.group("db")
def command() -> None:
    """Database schema and housekeeping."""


@command.command("upgrade")
@database_url_option
@click.pass_context
def upgrade(ctx: click.Context, database_url: str | None) -> None:
    """Apply the schema migrations (idempotent: an up-to-date database is left alone)."""
    settings = settings_from(ctx, database_url=database_url)
    revision = _run("upgrade", settings, upgrade_engine)
    click.echo(f"database schema at revision {revision} (head)")


@command.command("current")
@database_url_option
@click.pass_context
def current(ctx: click.Context, database_url: str | None) -> None:
    """Show the database's schema revision; exit 1 if it is not this code's head."""
    settings = settings_from(ctx, database_url=database_url)
    revision = _run("current", settings, current_revision, read_only=True)
    head = head_revision()
    if revision == head:
        click.echo(f"database schema at revision {revision} (head)")
        return
    raise _fail(
        "current",
        f"database schema at revision {revision or 'none'}, this code needs {head}: "
        "run `consumergen db upgrade`",
    )


@command.command("prune")
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    default=None,
    help="Age bound, e.g. 90d, 12h, 2w (default: CONSUMERGEN_PRUNE_OLDER_THAN, 90d). "
    "Inbox rows and tombstones older than this are deleted; a replay of events older "
    "than the bound is no longer recognised as duplicate.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@database_url_option
@click.pass_context
def prune_command(
    ctx: click.Context,
    older_than: str | None,
    batch_size: int,
    dry_run: bool,
    database_url: str | None,
) -> None:
    """Remove inbox rows and tombstones older than a bound, in small batches."""
    settings = settings_from(ctx, database_url=database_url)
    try:
        bound = parse_duration(older_than or settings.prune_older_than)
    except ValueError as exc:
        raise _fail("prune", f"--older-than: {exc}", EXIT_USAGE) from None

    async def work(engine: AsyncEngine) -> PruneResult:
        await ensure_schema_current(engine)
        return await prune(engine, bound, batch_size=batch_size, dry_run=dry_run)

    result = _run("prune", settings, work, read_only=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {result.inbox_rows} inbox rows and {result.tombstones} tombstones "
        f"older than {result.cutoff.isoformat()}"
    )
