"""What every verb shares: loading settings, one-line errors, exit codes."""

from __future__ import annotations

import click

from service.config import ConfigError, Settings, load_settings
from service.domain.errors import ConfigurationError
from service.store.dialects import dialect_for_url

#: Exit codes: 1 = the work found a problem (failed events, a diff), 2 = usage or
#: configuration error.
EXIT_PROBLEM = 1
EXIT_USAGE = 2


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
