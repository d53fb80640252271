"""`consumergen run`: the daemon that applies events to the database."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("run", 6)
def command(args: tuple[str, ...]) -> None:
    """the daemon that applies events to the database (not built yet)."""
