"""What every verb shares: loading settings, one-line errors, exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from service.config import ConfigError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes: 1 = the work found a problem (failed events, a diff), 2 = usage or
#: configuration error, 3 = a verb that is not built yet.
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NOT_BUILT = 3


def settings_from(ctx: click.Context, **overrides: object) -> Settings:
    """Load the settings once per invocation; bad configuration is a one-line usage error."""
    config_file = ctx.find_root().params.get("config_file")
    try:
        return load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def not_built(verb: str, issue: int) -> Callable[[F], F]:
    """Mark a verb whose issue has not landed: it says so and exits non-zero, never pretends."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            click.echo(
                f"consumergen {verb}: not built yet (tracked in issue {issue}); nothing was done.",
                err=True,
            )
            raise SystemExit(EXIT_NOT_BUILT)

        return wrapper  # type: ignore[return-value]

    return decorate
