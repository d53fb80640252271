"""`consumergen replay`: re-drive events from the topic, dead-letter topic or an archive."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("replay", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("replay", 7)
def command(args: tuple[str, ...]) -> None:
    """re-drive events from the topic, dead-letter topic or an archive (not built yet)."""
