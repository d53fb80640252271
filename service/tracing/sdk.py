"""The OpenTelemetry SDK set up from the standard variables, and nothing else.

Every ``OTEL_*`` variable is read by the SDK's own code, never parsed here:
``Resource.create()`` reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``;
``TracerProvider()`` reads ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (default
``parentbased_always_on``: the producer's decision carries through the daemon) and
``OTEL_SDK_DISABLED`` (its tracer is then a no-op, which turns tracing off here); the
``BatchSpanProcessor`` reads ``OTEL_BSP_*``; the OTLP exporter reads
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression, certificates).  The
exporters are chosen from ``OTEL_TRACES_EXPORTER`` and ``OTEL_EXPORTER_OTLP_PROTOCOL``
by the SDK's configurator functions (``opentelemetry.sdk._configuration``, the code
``opentelemetry-instrument`` runs; underscore-named, hence the ``<2`` bound in
pyproject.toml and the tests of the selection).  Only the traces signal is set up:
the daemon's metrics stay Prometheus, its logs stay structlog.

The OTLP protocol defaults to ``http/protobuf`` (the specification's default; the
Python SDK alone would pick gRPC, which the ``traces`` extra does not ship): like
``opentelemetry-distro``, which sets its defaults in ``os.environ``, but only while the
SDK reads it, so the process's environment is left as it was.

The tracer provider is the service's own, not OpenTelemetry's global one: the global
can be set once per process, and the service's producer, daemon and tests each need
theirs.  Every exporter is wrapped in ``RedactingSpanExporter``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler

from service import __version__
from service.config import ConfigError
from service.logging.redaction import Redactor
from service.tracing.redaction import RedactingSpanExporter

#: The instrumentation scope of every span the service makes.
SCOPE: Final = "consumergen"
#: The service name when ``OTEL_SERVICE_NAME`` is not set (the SDK's would be
#: ``unknown_service``).
DEFAULT_SERVICE_NAME: Final = "consumergen"
#: The specification's default OTLP protocol, and the one exporter the extra ships.
DEFAULT_OTLP_PROTOCOL: Final = "http/protobuf"


class Tracing:
    """The service's tracer, its provider, and the redactor for the pseudonyms it sets."""

    __slots__ = ("parent_based", "provider", "redactor", "tracer")

    def __init__(self, provider: TracerProvider, redactor: Redactor) -> None:
        self.provider = provider
        self.redactor = redactor
        self.tracer: trace.Tracer = provider.get_tracer(SCOPE, __version__)
        #: The sampler follows the parent's decision (``parentbased_*``, the default): a
        #: child of an unsampled context is never recorded, so need not be made.
        self.parent_based = isinstance(provider.sampler, ParentBased)

    def pseudonym(self, text: str) -> str:
        """``text`` (a UUID, or text holding one) with its UUIDs as the logs' pseudonyms."""
        return self.redactor.redact_text(text)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()


def build_tracing(
    exporters: Sequence[SpanExporter],
    key: bytes,
    *,
    sampler: Sampler | None = None,
    resource: Resource | None = None,
    batch: bool = True,
) -> Tracing | None:
    """A ``Tracing`` exporting to ``exporters`` (each behind the redaction guard).

    None when the SDK is disabled (``OTEL_SDK_DISABLED``).  ``batch=False`` exports each
    span as it ends (tests with an in-memory exporter); the service batches.
    """
    redactor = Redactor(key)
    provider = TracerProvider(
        sampler=sampler,  # None: the SDK reads OTEL_TRACES_SAMPLER
        resource=resource or _resource(),
    )
    tracing = Tracing(provider, redactor)
    if isinstance(tracing.tracer, trace.NoOpTracer):
        return None  # OTEL_SDK_DISABLED=true: the SDK hands out a no-op tracer
    for exporter in exporters:
        guarded = RedactingSpanExporter(exporter, redactor)
        processor = BatchSpanProcessor(guarded) if batch else SimpleSpanProcessor(guarded)
        provider.add_span_processor(processor)
    return tracing


def _resource() -> Resource:
    """The SDK's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), named
    ``consumergen`` where the SDK would say ``unknown_service``."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def exporter_classes() -> list[type[SpanExporter]]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, as the SDK's configurator selects
    them; a name or protocol it cannot serve is a ``ConfigError`` naming the variable."""
    try:
        with _protocol_default():
            names = _get_exporter_names("traces")
            classes, _, _ = _import_exporters(names, [], [])
    except RuntimeError as exc:
        raise ConfigError(
            f"{OTEL_TRACES_EXPORTER}={os.environ.get(OTEL_TRACES_EXPORTER, '')!r} "
            f"({OTEL_EXPORTER_OTLP_PROTOCOL}="
            f"{os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL, '')!r}): {exc}; the traces "
            "extra ships the OTLP/HTTP exporter (otlp with http/protobuf) and console"
        ) from None
    return list(classes.values())


@contextmanager
def _protocol_default() -> Iterator[None]:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` while the SDK reads it, when neither
    protocol variable is set (the distro's ``setdefault``, without leaving it set)."""
    if os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) or os.environ.get(
        OTEL_EXPORTER_OTLP_PROTOCOL
    ):
        yield
        return
    os.environ[OTEL_EXPORTER_OTLP_PROTOCOL] = DEFAULT_OTLP_PROTOCOL
    try:
        yield
    finally:
        os.environ.pop(OTEL_EXPORTER_OTLP_PROTOCOL, None)


def from_environment(key: bytes) -> Tracing | None:
    """Tracing as the ``OTEL_*`` variables describe it; None when they turn it off."""
    classes = exporter_classes()
    if not classes:
        return None  # OTEL_TRACES_EXPORTER unset or "none"
    return build_tracing([cls() for cls in classes], key)
