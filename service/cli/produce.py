"""`consumergen produce`: validate and publish consumer events."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("produce", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("produce", 5)
def command(args: tuple[str, ...]) -> None:
    """validate and publish consumer events (not built yet)."""
