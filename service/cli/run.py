"""`consumergen run`: the daemon."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
import structlog

from service.cli._common import EXIT_USAGE, settings_from
from service.config import ConfigError, Settings

log = structlog.get_logger(__name__)

LOCAL_DATA = Path(".local")
LOCAL_OUTCOMES_TOPIC = "consumer-events.outcomes"


@click.command("run")
@click.option(
    "--bootstrap-server", "bootstrap_servers", help="Overrides CONSUMERGEN_BOOTSTRAP_SERVERS."
)
@click.option("--database-url", help="Overrides CONSUMERGEN_DATABASE_URL.")
@click.option(
    "--health-port", type=click.IntRange(0, 65535), help="Overrides CONSUMERGEN_HEALTH_PORT."
)
@click.option(
    "--local",
    is_flag=True,
    help="Embedded default: start a local Kafka broker (data in .local/kafka), migrate the "
    "database, create the topics (outcomes topic on), then run.",
)
@click.pass_context
def command(
    ctx: click.Context,
    bootstrap_servers: str | None,
    database_url: str | None,
    health_port: int | None,
    local: bool,
) -> None:
    """Apply events from the topic to the database until SIGTERM/SIGINT.

    Readiness, liveness and Prometheus metrics are served on CONSUMERGEN_HEALTH_HOST:PORT
    at /readyz, /livez and /metrics.
    """
    settings = settings_from(
        ctx,
        bootstrap_servers=bootstrap_servers,
        database_url=database_url,
        health_port=health_port,
    )
    from service.cli._common import start_tracing
    from service.logging import configure_logging

    start_tracing(ctx, settings)  # traces by the OTEL_* variables (README, Tracing)

    configure_logging(settings)  # again: the options above may have changed the settings
    from service.daemon.listeners import check_exposure

    try:
        check_exposure(settings)
    except ConfigError as exc:
        click.echo(f"consumergen run: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    if local:
        raise SystemExit(_run_local(settings))
    raise SystemExit(_on_loop(settings, _run(settings)))


def _on_loop(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on the event loop the settings choose; a loop that cannot be had is
    a one-line error naming the setting."""
    from service.config import ConfigError
    from service.event_loop import run

    try:
        return run(settings, main)
    except ConfigError as exc:
        click.echo(f"consumergen run: {exc}", err=True)
        return EXIT_USAGE


async def _run(settings: Settings) -> int:
    from service.daemon.signals import run_daemon
    from service.domain.errors import ConfigurationError
    from service.store.engine import create_engine
    from service.store.errors import DatabaseNotFound

    try:
        # Never creates the database: a wrong SQLite path is named, not made empty.
        engine = create_engine(settings, create=False)
    except DatabaseNotFound as exc:
        click.echo(f"consumergen run: {exc}", err=True)
        return EXIT_USAGE
    try:
        # The daemon checks the schema itself (waiting, not crashing, while the database
        # is down or locked) and raises a ConfigurationError when the schema is not this
        # code's, the database may lose what it commits, a port cannot be listened on
        # (ListenerError) or the Kafka client library is unfit.
        return await run_daemon(settings, engine)
    except ConfigurationError as exc:
        click.echo(f"consumergen run: {exc}", err=True)
        return EXIT_USAGE
    finally:
        await engine.dispose()


def _run_local(settings: Settings) -> int:
    """Start the embedded broker, prepare database and topics, run; stop the broker after."""
    from service.embedded.kafka import KafkaBroker
    from service.kafka.topics import ensure_topics
    from service.store.migrate import upgrade

    host, _, port = settings.bootstrap_servers.partition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit() or "," in port:
        raise click.UsageError(
            "--local starts a broker on 127.0.0.1; CONSUMERGEN_BOOTSTRAP_SERVERS must be "
            f"127.0.0.1:PORT, not {settings.bootstrap_servers}"
        )
    if settings.outcomes_topic is None:
        settings = settings.model_copy(update={"outcomes_topic": LOCAL_OUTCOMES_TOPIC})
    from service.config import env_name
    from service.daemon.listeners import Listener, ListenerError, probe

    servers = env_name("bootstrap_servers")
    broker_port = Listener(servers, servers, host, int(port))
    try:
        probe(settings, [broker_port])  # a taken port is one line now, before the broker
    except ListenerError as exc:
        click.echo(f"consumergen run: {exc}", err=True)
        return EXIT_USAGE
    broker = KafkaBroker((LOCAL_DATA / "kafka").resolve(), port=int(port))
    broker.start()
    log.info(
        "local broker started",
        bootstrap=broker.bootstrap_servers,
        seconds=round(broker.started_in, 1),
    )
    try:

        async def prepare_and_run() -> int:
            await upgrade(settings)
            await ensure_topics(settings)
            return await _run(settings)

        return _on_loop(settings, prepare_and_run())
    finally:
        broker.stop()
