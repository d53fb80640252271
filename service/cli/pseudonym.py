"""`consumergen pseudonym UUID`: the log pseudonym of a UUID under the configured key.

Logs never show a consumer's UUID, only ``uuid:`` + 12 hex of a keyed HMAC; an operator
who knows the UUID runs this to get the string to search the logs for.
"""

from __future__ import annotations

import click

from service.cli._common import EXIT_USAGE, settings_from
from service.config import env_name
from service.logging import canonical_uuid, pseudonym, redaction_key


@click.command("pseudonym")
@click.argument("value", metavar="UUID")
@click.pass_context
def command(ctx: click.Context, value: str) -> None:
    """Print the log pseudonym of UUID (dashed, 32 hex, {braces}, urn:uuid:) under the key."""
    try:
        canonical = canonical_uuid(value)
    except ValueError:
        click.echo(f"consumergen pseudonym: not a UUID: {value!r}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    key = redaction_key(settings_from(ctx))
    if key is None:
        click.echo(
            f"consumergen pseudonym: {env_name('log_redaction_key')} is not set, so the service "
            "uses a random key per process and no pseudonym can be computed.",
            err=True,
        )
        raise SystemExit(EXIT_USAGE)
    click.echo(pseudonym(canonical, key))
