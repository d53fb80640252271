"""Start: wait for a current schema, then connect the clients, both retried through
stamina (``service.daemon.retries``) until they work or the daemon is told to stop.

A schema this code does not match is refused (``SchemaNotCurrentError`` propagates);
but a database that is down or locked, a broker that is not there yet, or credentials
that are fixed later are waited for, with capped, jittered backoff and /readyz saying
what is wrong: the daemon neither gives up nor hammers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed
from sqlalchemy.ext.asyncio import AsyncEngine
from stamina.instrumentation import RetryDetails

from service.config import Settings
from service.daemon.health import Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.ports import ProducerLifecycle
from service.daemon.retries import retry_scope, retry_until_stopped
from service.kafka import tls
from service.kafka.clients import (
    BrokerUnavailable,
    client_options,
    close_quietly,
    start_bounded,
)
from service.store.durability import check_durability
from service.store.errors import describe, is_transient
from service.store.migrate import ensure_schema_current

log = structlog.get_logger(__name__)


async def check_schema_once(
    settings: Settings,
    engine: AsyncEngine,
    *,
    readiness: Readiness,
    metrics: DaemonMetrics,
) -> bool:
    """One look before anything listens: True when the schema is current and the
    database durable (or accepted as not); False when the database cannot answer now
    (readiness says why, and ``wait_for_schema`` waits for it with the probes up).  A
    schema that is not this code's, or a database that may lose what it commits,
    raises: the daemon stops before it binds a port or touches the broker."""
    try:
        await ensure_schema_current(engine)
        await check_durability(engine, settings)
    except Exception as exc:  # sorted just below: only a transient one is waited for
        if not is_transient(exc):
            raise
        readiness.database_reachable = False
        readiness.last_error = f"database: {describe(exc)}"
        metrics.infrastructure_failures.labels("database").inc()
        log.warning("database unavailable at start, waiting for it", error=describe(exc))
        return False
    return True


async def wait_for_schema(
    settings: Settings,
    engine: AsyncEngine,
    *,
    readiness: Readiness,
    metrics: DaemonMetrics,
    stop: asyncio.Event,
) -> None:
    """Return once the schema is current and the database durable, or accepted as not
    (``service.store.durability``), or once ``stop`` was set first."""
    failures = 0

    async def check() -> None:
        nonlocal failures
        try:
            await ensure_schema_current(engine)
            await check_durability(engine, settings)
        except Exception as exc:  # sorted just below: only a transient one is retried
            if is_transient(exc):
                failures += 1
                readiness.database_reachable = False
                readiness.last_error = f"database: {describe(exc)}"
                metrics.infrastructure_failures.labels("database").inc()
            raise

    def retrying(details: RetryDetails) -> None:
        log.warning(
            "database unavailable at start, retrying",
            error=describe(details.caused_by),
            attempt=details.retry_num,
            retry_in=round(details.wait_for, 2),
        )

    with retry_scope(metrics, "startup_database", retrying):
        done, _ = await retry_until_stopped(
            check,
            stop=stop,
            wait_initial=settings.infra_retry_wait_initial_seconds,
            wait_max=settings.infra_retry_wait_max_seconds,
            interrupt_attempt=False,
            retry_on=is_transient,
        )
    if done:
        readiness.database_reachable = True
        if failures:
            log.info("database reachable, starting", failed_attempts=failures)


async def start_clients(
    settings: Settings,
    *,
    producer: ProducerLifecycle,
    consumer: Callable[[], AIOKafkaConsumer],
    renew_consumer: Callable[[], None],
    readiness: Readiness,
    metrics: DaemonMetrics,
    stop: asyncio.Event,
    when: str = "at start",
) -> None:
    """Start the sinks' producer and the consumer (or return when ``stop`` came first).

    A failed client cannot start again: after a failure the producer is dropped and
    ``renew_consumer`` makes a fresh consumer for the next attempt.  ``when`` goes into
    the retry warning ("at start", or "after an outage" from ``service.daemon.outage``)."""
    failures = 0
    cause: str | None = None

    async def connect() -> None:
        nonlocal failures, cause
        try:
            await producer.start()
            await start_bounded(consumer(), settings, "consumer")
        except BrokerUnavailable as exc:
            failures += 1
            readiness.broker_reachable = False
            metrics.infrastructure_failures.labels("broker").inc()
            await producer.stop_quietly()
            # Closed before it is dropped, started or not: a consumer that is merely
            # forgotten makes asyncio log "Unclosed AIOKafkaConsumer" when it is collected.
            await close_quietly(consumer())
            renew_consumer()
            cause = await diagnose_connection(settings)
            if cause is not None and cause.startswith("authentication failed"):
                readiness.last_error = f"broker: {cause}"
            else:
                readiness.last_error = f"broker: {cause or exc}"
            raise

    def retrying(details: RetryDetails) -> None:
        delay = round(details.wait_for, 2)
        if cause is not None and cause.startswith(tls.PREFIX):
            # One error line per attempt that says which setting to look at.
            log.error(
                f"Kafka TLS handshake failed; retrying. {cause}",
                security_protocol=settings.security_protocol,
                attempt=details.retry_num,
                retry_in=delay,
            )
        elif cause is not None and cause.startswith("authentication failed"):
            log.error(
                "Kafka refused the credentials; check CONSUMERGEN_SASL_USERNAME, "
                "CONSUMERGEN_SASL_PASSWORD and CONSUMERGEN_SASL_MECHANISM; retrying",
                bootstrap=settings.bootstrap_servers,
                security_protocol=settings.security_protocol,
                mechanism=settings.sasl_mechanism,
                username=settings.sasl_username,
                attempt=details.retry_num,
                retry_in=delay,
            )
        else:
            log.warning(
                f"broker unavailable {when}, retrying",
                error=str(details.caused_by),
                cause=cause,
                attempt=details.retry_num,
                retry_in=delay,
            )

    with retry_scope(metrics, "startup_broker", retrying):
        done, _ = await retry_until_stopped(
            connect,
            stop=stop,
            wait_initial=settings.infra_retry_wait_initial_seconds,
            wait_max=settings.infra_retry_wait_max_seconds,
            interrupt_attempt=False,
            retry_on=lambda exc: isinstance(exc, BrokerUnavailable),
        )
    if done:
        readiness.broker_reachable = True
        readiness.last_error = None
        if failures:
            log.info("broker reachable, starting", failed_attempts=failures)


async def diagnose_connection(settings: Settings) -> str | None:
    """Why the first bootstrap server refused us: aiokafka's start error only says
    "unable to bootstrap"; one direct connection tells a wrong password apart from a
    broker that is down.  The answer never contains the credentials."""
    options = client_options(settings)
    servers: list[str] = options.pop("bootstrap_servers")
    host, _, port = servers[0].rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: "[::1]:9092"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), **options), settings.request_timeout_seconds
        )
    except SaslAuthenticationFailed as exc:
        text_ = " ".join(str(exc).split())
        return f"authentication failed ({settings.sasl_mechanism}): {text_}"
    except (KafkaError, OSError, TimeoutError, ValueError) as exc:
        explained = tls.explain_connect_error(exc, settings, servers[0])
        return explained or " ".join((str(exc) or type(exc).__name__).split())
    conn.close()
    return None
