"""What every verb shares: loading settings, one-line errors, exit codes."""

from __future__ import annotations

import click

from service.config import ConfigError, Settings, load_settings

#: Exit codes: 1 = the work found a problem (failed events, a diff), 2 = usage or
#: configuration error.
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Load the settings once per invocation; bad configuration is a one-line usage error."""
    config_file = ctx.find_root().params.get("config_file")
    try:
        return load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
