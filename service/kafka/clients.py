"""The one place that says how the service's Kafka clients are built.

The producers (the daemon's sinks, ``EventProducer``, replay's ``--republish``), the
admin clients and the consumers must connect the same way (TLS, SASL, timeouts), and
every producer must write the same way (acks=all, idempotent), so the settings ->
aiokafka keyword translation lives here once.  Secrets go into the options dict and
nowhere else: nothing here logs them.  Topic administration is ``service.kafka.topics``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from service.config import Settings
from service.domain.errors import InfrastructureUnavailable
from service.kafka import records as kafka_records

log = structlog.get_logger(__name__)

#: Room for the record overhead on top of the largest event a producer may send.
PRODUCER_REQUEST_OVERHEAD_BYTES: Final = 65_536


class BrokerUnavailable(InfrastructureUnavailable):
    """The broker could not be reached or did not answer in time; the message says which."""


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments common to ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and
    ``AIOKafkaAdminClient``."""
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",") if s],
        "client_id": settings.client_id,
        "request_timeout_ms": int(settings.request_timeout_seconds * 1000),
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        password = settings.ssl_keyfile_password
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
            password=password.get_secret_value() if password else None,
        )
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.sasl_username
        secret = settings.sasl_password
        options["sasl_plain_password"] = secret.get_secret_value() if secret else None
    return options


def consumer_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for every ``AIOKafkaConsumer`` of the service (daemon, replay,
    verify, archive): the connection options plus what every reader must do alike.

    ``read_committed``: records of aborted (or still open) transactions are never
    handed out, so nothing a producer took back is applied, replayed or archived.
    Building the options installs the tolerant record parser
    (``service.kafka.records``) and fails (``kafka_records.KafkaClientUnfit``), naming
    it, when a compression codec's library is missing: before any record is read.
    """
    kafka_records.install()
    kafka_records.check_codecs()
    options = client_options(settings)
    options.update(
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1_048_576, settings.max_event_bytes * 2),
    )
    options.update(overrides)
    return options


def max_request_size(settings: Settings) -> int:
    """The producers' ``max_request_size``: room for the largest event the service takes
    (plus record overhead), and never less than Kafka's usual 1 MiB."""
    return max(1_048_576, settings.max_event_bytes + PRODUCER_REQUEST_OVERHEAD_BYTES)


def producer_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for every ``AIOKafkaProducer`` of the service.

    ``acks="all"`` with idempotence: a write is acknowledged only once every in-sync
    replica has it, and a retried send can neither be lost nor written twice by the
    producer itself.  A short linger lets concurrent sends share a request.
    """
    options = client_options(settings)
    options.update(
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=max_request_size(settings),
    )
    options.update(overrides)
    return options


def describe_servers(settings: Settings) -> str:
    """What to name in an error: the bootstrap list (never credentials)."""
    return settings.bootstrap_servers


async def start_bounded(client: Any, settings: Settings, what: str) -> None:
    """``await client.start()``, but never longer than the request timeout.

    aiokafka gives up quickly on a refused connection, but a black-holed address could
    keep it waiting on the operating system; an operator needs an answer, not a hang.
    """
    timeout = settings.request_timeout_seconds
    try:
        await asyncio.wait_for(client.start(), timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        await close_quietly(client)
        # "within N s" only when the bound is what ended it: a refused connection fails
        # in a fraction of a second, and saying "within 30 s" then misleads.
        timed_out = isinstance(exc, TimeoutError)
        detail = f"no answer within {timeout:g} s" if timed_out else error_text(exc)
        raise BrokerUnavailable(
            f"cannot connect the {what} to Kafka at {describe_servers(settings)}: {detail}"
        ) from None


async def close_quietly(client: Any) -> None:
    """Producers and consumers ``stop()``, the admin client ``close()``s."""
    closer = getattr(client, "stop", None) or client.close
    try:
        await closer()
    except Exception as exc:  # closing a half-started client: nothing more to do
        log.debug("kafka_client_close_failed", error=type(exc).__name__)


def error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
