"""`consumergen verify`: prove that the database matches the events topic."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("verify", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("verify", 7)
def command(args: tuple[str, ...]) -> None:
    """prove that the database matches the events topic (not built yet)."""
