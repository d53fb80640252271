"""The ``consumergen`` command line: one module per verb, registered here."""

from __future__ import annotations

import click

from service import __version__
from service.cli import (
    archive,
    db,
    get,
    produce,
    pseudonym,
    replay,
    run,
    show,
    topics,
    verify,
)
from service.cli._common import settings_from
from service.logging import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file of CONSUMERGEN_*=value lines (environment variables win over it).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also print the libraries' INFO lines (alembic, aiokafka, ...); so does "
    "CONSUMERGEN_LOG_LEVEL=DEBUG. `run` (the daemon) always logs them.",
)
@click.version_option(__version__, prog_name="consumergen")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """Keep the authoritative record of consumers and their generation, fed by Kafka events."""
    # Validate the configuration before any verb runs, so a bad setting fails at start-up
    # with its name, whatever the verb; and route every log record (ours and the
    # libraries') through the redacting set-up before anything can log.  A verb prints
    # what was asked for: the libraries' INFO lines only with --verbose (or DEBUG).
    configure_logging(settings_from(ctx), warn_missing_key=False, quiet_libraries=not verbose)


for _module in (produce, run, replay, archive, verify, show, get, db, topics, pseudonym):
    cli.add_command(_module.command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="consumergen")
