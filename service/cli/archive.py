"""`consumergen archive`: dump a topic range to a JSONL archive."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("archive", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("archive", 7)
def command(args: tuple[str, ...]) -> None:
    """dump a topic range to a JSONL archive (not built yet)."""
