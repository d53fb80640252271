"""`consumergen db`: schema migrations and inbox pruning."""

from __future__ import annotations

import click

from service.cli._common import not_built


@click.group("db")
def command() -> None:
    """Database schema and housekeeping."""


@command.command("upgrade")
@not_built("db upgrade", 4)
def upgrade() -> None:
    """Apply the schema migrations (not built yet)."""


@command.command("prune", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@not_built("db prune", 4)
def prune(args: tuple[str, ...]) -> None:
    """Remove old inbox rows and tombstones (not built yet)."""
