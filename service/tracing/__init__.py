"""OpenTelemetry traces: optional, configured only by the standard ``OTEL_*`` variables.

This package's front costs one attribute read when tracing is off: ``active()`` is
None without the ``traces`` extra, with ``OTEL_SDK_DISABLED=true``, or when
``OTEL_TRACES_EXPORTER`` names no exporter; every caller checks it once (per send, per
batch) and does nothing more.  Nothing here imports OpenTelemetry; ``sdk`` (the set-up),
``headers`` (W3C trace context in Kafka headers), ``redaction`` (no UUID in any
exported span) and ``spans`` (the spans this service makes) do, and are imported only
once tracing is configured.

What was evaluated and not used: ``opentelemetry-instrumentation-aiokafka``.  It wraps
``AIOKafkaProducer.send`` and ``AIOKafkaConsumer.getone/getmany`` for every client in
the process, and its spans do not fit this service's contract: (1) it records the Kafka
key, which is the consumer UUID, in clear as ``messaging.kafka.message.key``; (2) its
"send" span ends when the record is appended to aiokafka's buffer, before the
acknowledgement, so it cannot cover the wait for the outcome that ``send_and_wait``
closes; (3) it would also wrap the daemon's own sinks (dead letters, outcomes, replies),
whose records must carry the *event's* span, not a send span of their own; (4) its
consumer side makes a zero-length span per record at fetch time, where the contract
wants a span per batch linked to each event and a span per event covering admission to
outcome; (5) its header getter decodes header bytes strictly, so a hostile record's
non-UTF-8 ``traceparent`` would raise inside the fetch.  So the spans and the header
getter/setter are written here by hand, on the OpenTelemetry API and SDK (propagation
through ``opentelemetry.propagate``, so ``OTEL_PROPAGATORS`` is honoured; sampling,
resource, exporters and batching from the SDK's own readers of the variables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka.structs import ConsumerRecord

    from service.config import Settings
    from service.tracing.daemon import BatchTrace
    from service.tracing.sdk import Tracing


class _State:
    active: Tracing | None = None


def active() -> Tracing | None:
    """The configured tracing, or None: the one check callers make."""
    return _State.active


def batch_trace(
    topic: str, partition: int, batch: Sequence[ConsumerRecord], group: str | None
) -> BatchTrace | None:
    """The spans of one batch the daemon takes (``service.tracing.daemon``), or None
    when tracing is off: the worker's one check per batch."""
    tracing = _State.active
    if tracing is None:
        return None
    from service.tracing.daemon import BatchTrace

    return BatchTrace(tracing, topic, partition, batch, group)


def install(tracing: Tracing | None) -> Tracing | None:
    """Make ``tracing`` the process's tracing (None: off); returns the one it replaces.

    ``configure_tracing`` calls it; tests and embedders call it with
    ``sdk.build_tracing`` (an in-memory exporter, say).
    """
    previous, _State.active = _State.active, tracing
    return previous


def extra_installed() -> bool:
    """Whether the ``traces`` extra (the OpenTelemetry SDK) is importable."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.sdk.trace") is not None
    except ModuleNotFoundError:  # no "opentelemetry" package at all
        return False


def configure_tracing(settings: Settings) -> Tracing | None:
    """Configure tracing from the ``OTEL_*`` variables, install it and return it.

    None (tracing off) without the extra, when ``OTEL_SDK_DISABLED`` is true, or when
    ``OTEL_TRACES_EXPORTER`` is unset or ``none``.  An exporter or protocol the SDK
    does not know is a ``ConfigError`` naming the variable.  Spans carry the logs'
    pseudonyms: the key is ``CONSUMERGEN_LOG_REDACTION_KEY`` (or the process's random one).
    """
    if not extra_installed():
        install(None)
        return None
    from service.logging.setup import active_redaction_key
    from service.tracing.sdk import from_environment

    tracing = from_environment(active_redaction_key(settings))
    install(tracing)
    return tracing


def shutdown_tracing() -> None:
    """Export what is buffered and stop (bounded by the SDK's export timeout)."""
    tracing = install(None)
    if tracing is not None:
        tracing.shutdown()


__all__ = [
    "active",
    "batch_trace",
    "configure_tracing",
    "extra_installed",
    "install",
    "shutdown_tracing",
]
