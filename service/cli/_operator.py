"""What `replay`, `archive`, `verify` and `show` share: range options, progress, errors.

Every argument is checked before any write: range options are parsed first, then the
source is opened (unknown partitions, missing topics and malformed archive lines are
usage errors, exit 2), and only then is a database engine created.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from service.cli._common import EXIT_PROBLEM, EXIT_USAGE
from service.kafka.clients import BrokerUnavailable
from service.kafka.records import KafkaClientUnfit
from service.replay.ranges import RangeError, RangeSpec
from service.replay.report import RichProgress
from service.replay.runner import NoProgress, Progress
from service.replay.sources import SourceError
from service.store.errors import (
    DatabaseNotFound,
    SchemaNotCurrentError,
    TransientDatabaseError,
    describe,
)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def range_options(func: F) -> F:
    """The options that choose records of a topic (or filter an archive)."""
    options = [
        click.option(
            "--from-beginning", is_flag=True, help="Start at the first record still in the log."
        ),
        click.option(
            "--from-offset",
            multiple=True,
            metavar="P:O",
            help="Start partition P at offset O (repeatable; names the partitions to read).",
        ),
        click.option(
            "--from-timestamp",
            metavar="TIME",
            help="Start at the first record at or after TIME (ISO 8601; naive = UTC).",
        ),
        click.option(
            "--to-offset",
            multiple=True,
            metavar="P:O",
            help="Stop partition P after offset O, inclusive (repeatable).",
        ),
        click.option(
            "--to-timestamp", metavar="TIME", help="Stop before the first record at or after TIME."
        ),
        click.option(
            "--partition",
            "partitions",
            multiple=True,
            type=click.IntRange(min=0),
            help="Read only this partition (repeatable). Default: all.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def range_spec(params: dict[str, Any], *, require_start: bool) -> RangeSpec:
    try:
        return RangeSpec.from_options(
            from_beginning=params["from_beginning"],
            from_offset=params["from_offset"],
            from_timestamp=params["from_timestamp"],
            to_offset=params["to_offset"],
            to_timestamp=params["to_timestamp"],
            partitions=params["partitions"],
            require_start=require_start,
        )
    except RangeError as exc:
        raise click.UsageError(str(exc)) from None


def progress_for(interactive: bool | None = None) -> tuple[Progress, float]:
    """A rich bar on a terminal (and no progress log lines), else log lines every 5 s."""
    console = Console(stderr=True)
    if interactive if interactive is not None else sys.stderr.isatty():
        return RichProgress(console), float("inf")
    return NoProgress(), 5.0


def run(verb: str, work: Coroutine[Any, Any, T]) -> T:
    """Run the async part; infrastructure trouble is one line on stderr and exit 1,
    an argument the source refuses is a usage error (exit 2)."""
    try:
        return asyncio.run(work)
    except (RangeError, SourceError) as exc:
        raise click.UsageError(str(exc)) from None
    except DatabaseNotFound as exc:
        click.echo(f"consumergen {verb}: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    except (
        BrokerUnavailable,
        TransientDatabaseError,
        SchemaNotCurrentError,
        KafkaClientUnfit,
    ) as exc:
        click.echo(f"consumergen {verb}: {exc}", err=True)
        raise SystemExit(EXIT_PROBLEM) from None
    except (OSError, SQLAlchemyError) as exc:
        click.echo(f"consumergen {verb}: {describe(exc)}", err=True)
        raise SystemExit(EXIT_PROBLEM) from None


def stdout_console() -> Console:
    """Rich output on stdout; plain and wide (so UUIDs are never folded) when it is not
    a terminal."""
    console = Console(soft_wrap=False, highlight=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, highlight=False, width=160)
    return console
