"""The one place that says how the service's Kafka clients are built.

The producers (the daemon's sinks, ``EventProducer``, replay's ``--republish``), the
admin clients and the consumers must connect the same way (TLS, SASL, timeouts), and
every producer must write the same way (acks=all, idempotent), so the settings ->
aiokafka keyword translation lives here once.  Secrets go into the options dict and
nowhere else: nothing here logs them.  Topic administration is ``service.kafka.topics``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

import structlog
from aiokafka.errors import KafkaError

from service.config import ConfigError, Settings
from service.domain.errors import InfrastructureUnavailable
from service.kafka import records as kafka_records
from service.kafka import tls

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
        options["ssl_context"] = ssl_context(settings)
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.sasl_username
        secret = settings.sasl_password
        options["sasl_plain_password"] = secret.get_secret_value() if secret else None
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every client: the broker's certificate is verified against
    ``ssl_cafile`` (the system's CAs when unset) and must name the host connected to;
    ``ssl_certfile``/``ssl_keyfile`` are the client's own for mutual TLS.

    A file that cannot be read, or a key its password does not open, is a configuration
    error naming the setting, raised before any connection (the key password and the
    file contents never appear in it)."""
    password = settings.ssl_keyfile_password
    files = (
        ("CONSUMERGEN_SSL_CAFILE", settings.ssl_cafile),
        ("CONSUMERGEN_SSL_CERTFILE", settings.ssl_certfile),
        ("CONSUMERGEN_SSL_KEYFILE", settings.ssl_keyfile),
    )
    for name, path in files:
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}={path}: no such file")
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise ConfigError("CONSUMERGEN_SSL_KEYFILE is set without CONSUMERGEN_SSL_CERTFILE")
    # The standard library's defaults for a client (CERT_REQUIRED, host names checked,
    # TLS 1.2 at least), which aiokafka's create_ssl_context also sets but logs at INFO
    # for every client made.  Two steps, so that the error names the setting whose file
    # is unusable; only OpenSSL's reason is quoted.
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"CONSUMERGEN_SSL_CAFILE={settings.ssl_cafile}: no CA certificate could be "
            f"read from it ({_ssl_reason(exc)})"
        ) from None
    if settings.ssl_certfile is not None:
        try:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                password.get_secret_value() if password else None,
            )
        except ssl.SSLError as exc:
            raise ConfigError(
                f"CONSUMERGEN_SSL_CERTFILE={settings.ssl_certfile}, CONSUMERGEN_SSL_KEYFILE="
                f"{settings.ssl_keyfile}: the certificate and key cannot be used "
                f"(OpenSSL: {_ssl_reason(exc)}); check that the key belongs to the "
                "certificate and that CONSUMERGEN_SSL_KEYFILE_PASSWORD opens it"
            ) from None
    return context


def _ssl_reason(error: ssl.SSLError) -> str:
    return str(getattr(error, "reason", None) or error.strerror or type(error).__name__)


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
        # aiokafka keeps one fetch in flight per broker, for the partitions with nothing
        # buffered: a partition drained meanwhile waits for that fetch to come back, up
        # to this long when the others are idle (aiokafka's default is 500 ms).
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
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
    producer itself.  No linger by default (``CONSUMERGEN_PRODUCER_LINGER_MS`` 0): an
    event's loop crosses two producers (the application's, the daemon's outcome
    records), so a linger is paid twice on the critical path, while under load the
    records handed over during a request in flight are batched into the next anyway.
    """
    options = client_options(settings)
    options.update(
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
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
        # A certificate failure is lost in aiokafka's "unable to bootstrap": ask once.
        detail = await tls.diagnose(settings, client_options(settings)) or detail
        raise BrokerUnavailable(
            f"cannot connect the {what} to Kafka at {describe_servers(settings)}: {detail}"
        ) from None


async def close_quietly(client: Any) -> None:
    """Producers and consumers ``stop()``, the admin client ``close()``s.

    aiokafka's consumer ``stop`` may itself end with ``CancelledError`` while nobody
    cancelled the caller (its fetcher awaits a request task it cancelled, when the
    broker is gone: aio-libs/aiokafka#647); the client is closed all the same, and that
    cancellation is not the caller's, so it stops here.  A cancellation of the caller
    still propagates."""
    closer = getattr(client, "stop", None) or client.close
    try:
        await closer()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("kafka_client_close_cancelled_itself")
    except Exception as exc:  # closing a half-started client: nothing more to do
        log.debug("kafka_client_close_failed", error=type(exc).__name__)


def error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
