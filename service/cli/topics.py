"""`consumergen topics`: create the events, dead-letter and outcomes topics."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("topics", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("topics", 5)
def command(args: tuple[str, ...]) -> None:
    """create the events, dead-letter and outcomes topics (not built yet)."""
