"""`consumergen get UUID`: a consumer's state through the daemon's read API (HTTP).

No database credentials needed (unlike ``show``): it asks ``GET /v1/consumers/{uuid}``
at ``CONSUMERGEN_READ_API_URL`` (with ``CONSUMERGEN_READ_API_TOKEN`` when set).  Exit 1
when the consumer is unknown or the API cannot answer, 2 for a malformed UUID.
"""

from __future__ import annotations

import asyncio
import json
import uuid as uuid_module

import click

from service.cli._common import EXIT_PROBLEM, settings_from
from service.config import ConfigError
from service.contract.state import state_document
from service.domain.consumer import ConsumerState
from service.producer.reads import ConsumerReader, ReadRefused, ReadUnavailable


def _canonical(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return str(uuid_module.UUID(value.strip()))
    except ValueError:
        raise click.BadParameter(f"not a UUID: {value!r}") from None


@click.command("get")
@click.argument("consumer_uuid", callback=_canonical)
@click.option("--url", help="The read API's base URL (CONSUMERGEN_READ_API_URL).")
@click.option("--json", "as_json", is_flag=True, help="The state as one JSON object.")
@click.pass_context
def command(ctx: click.Context, consumer_uuid: str, url: str | None, as_json: bool) -> None:
    """Show a consumer's generation, state and owners, read over HTTP from the daemon."""
    settings = settings_from(ctx, read_api_url=url)

    async def read() -> ConsumerState | None:
        async with ConsumerReader(settings) as reader:
            return await reader.get(consumer_uuid)

    try:
        state = asyncio.run(read())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except (ReadUnavailable, ReadRefused) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_PROBLEM) from None
    if state is None:
        click.echo(f"error: no consumer {consumer_uuid}", err=True)
        raise SystemExit(EXIT_PROBLEM)
    document = {"consumer_uuid": state.uuid, **state_document(state)}
    if as_json:
        click.echo(json.dumps(document))
        return
    for key, value in document.items():
        click.echo(f"{key}: {'' if value is None else value}")
