"""`consumergen show`: a consumer's state and its last processed events."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("show", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("show", 7)
def command(args: tuple[str, ...]) -> None:
    """a consumer's state and its last processed events (not built yet)."""
