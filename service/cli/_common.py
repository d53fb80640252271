"""What every verb shares: loading settings, one-line errors, exit codes.

The exit-code policy, for every verb: 0 done; 1 the work found a problem (a bad input
line, a failed event, a verify difference, a consumer not found, infrastructure that
could not be reached); 2 bad arguments or configuration, including a malformed UUID and
a database that does not exist for a command that only reads (one line on stderr
naming the option or setting).  ``tests/unit/test_cli_exit_codes.py`` holds it as a table.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable
from typing import Any, TypeVar

import click

from service.config import ConfigError, Settings, load_settings
from service.domain.errors import ConfigurationError
from service.store.dialects import dialect_for_url

#: Exit codes: 1 = the work found a problem (failed events, a diff), 2 = usage or
#: configuration error.
EXIT_PROBLEM = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def database_url_option(func: F) -> F:
    """``--database-url``: every verb that touches the database takes it."""
    return click.option(
        "--database-url", "database_url", help="Overrides CONSUMERGEN_DATABASE_URL."
    )(func)


def uuid_parameter(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A UUID argument or option in its canonical spelling; a malformed one is a usage
    error (exit 2) for every verb alike, not an invalid event."""
    if value is None:
        return None
    try:
        return str(uuid_module.UUID(value.strip()))
    except ValueError:
        raise click.BadParameter(f"not a UUID: {value!r}", param=param) from None


def start_tracing(ctx: click.Context, settings: Settings) -> None:
    """Traces for the verbs that make spans (produce, run, replay), configured by the
    ``OTEL_*`` variables (``service.tracing``) and flushed when the verb ends; a variable
    the SDK cannot serve is a usage error naming it."""
    from service.tracing import configure_tracing, shutdown_tracing

    try:
        configure_tracing(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.call_on_close(shutdown_tracing)


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Load the settings once per invocation; bad configuration is a one-line usage error."""
    config_file = ctx.find_root().params.get("config_file")
    try:
        settings = load_settings(config_file, **overrides)
        dialect_for_url(settings.database_url)  # a database no dialect speaks: say so now
        if settings.security_protocol in ("SSL", "SASL_SSL"):
            from service.kafka.clients import ssl_context

            ssl_context(settings)  # unreadable TLS files: name the setting before connecting
    except (ConfigError, ConfigurationError) as exc:
        raise click.UsageError(str(exc)) from None
    return settings
