"""`consumergen pseudonym`: print the log pseudonym of a UUID under the configured key."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.command("pseudonym", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("pseudonym", 3)
def command(args: tuple[str, ...]) -> None:
    """print the log pseudonym of a UUID under the configured key (not built yet)."""
