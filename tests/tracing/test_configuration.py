"""Tracing is configured by the standard OTEL_* variables only, through the SDK's own
readers: which exporter, which protocol, off when disabled, sampling, service name; a
variable the SDK cannot serve fails at start naming it; and an OTLP/HTTP export to a
receiver in the test, decoded as a collector would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from service.config import ConfigError, Settings
from service.logging import find_clear_uuid, pseudonym
from service.tracing import active, configure_tracing, install, shutdown_tracing
from service.tracing.sdk import exporter_classes, from_environment
from tests.tracing.conftest import OtlpReceiver

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture(autouse=True)
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OTEL_* variable unset, and put back as it was after the test."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_exporter_named_means_no_tracing() -> None:
    assert exporter_classes() == []
    assert from_environment(b"k") is None


def test_none_means_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert from_environment(b"k") is None


def test_otlp_is_otlp_over_http_protobuf_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert exporter_classes() == [OTLPSpanExporter]
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" not in os.environ  # the default was not left set


def test_several_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert exporter_classes() == [ConsoleSpanExporter, OTLPSpanExporter]


@pytest.mark.parametrize(
    ("variable", "value", "exporter"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "otlp"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "otlp"),
        ("OTEL_SERVICE_NAME", "x", "zipkin"),
    ],
)
def test_an_exporter_or_protocol_the_sdk_cannot_serve_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, exporter: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER="):
        configure_tracing(Settings())
    assert active() is None


def test_disabled_sdk_means_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert from_environment(b"k") is None


def test_sampling_is_parent_based_by_default_and_follows_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = from_environment(b"k")
    assert tracing is not None
    assert isinstance(tracing.provider.sampler, ParentBased)
    assert "AlwaysOnSampler" in tracing.provider.sampler.get_description()
    tracing.shutdown()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    tracing = from_environment(b"k")
    assert tracing is not None
    assert isinstance(tracing.provider.sampler, ParentBased)
    assert TraceIdRatioBased(0.01).get_description() in tracing.provider.sampler.get_description()
    tracing.shutdown()


def test_the_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = from_environment(b"k")
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "consumergen"
    tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-consumers")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    tracing = from_environment(b"k")
    assert tracing is not None
    attributes = tracing.provider.resource.attributes
    assert attributes["service.name"] == "billing-consumers"
    assert attributes["deployment.environment.name"] == "test"
    tracing.shutdown()


def test_configure_installs_and_shutdown_uninstalls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    previous = install(None)
    try:
        tracing = configure_tracing(Settings())
        assert tracing is not None and active() is tracing
        shutdown_tracing()
        assert active() is None
    finally:
        install(previous)


def test_without_the_extra_tracing_is_off_and_logging_works() -> None:
    """The package without OpenTelemetry importable (as installed without ``[traces]``):
    configure_tracing is None, the producer's check is None, logs have no trace ids."""
    code = (
        "import sys\n"
        "for name in ('opentelemetry', 'opentelemetry.trace', 'opentelemetry.sdk'):\n"
        "    sys.modules[name] = None\n"
        "import io, json, structlog\n"
        "from service.config import Settings\n"
        "from service.logging import configure_logging\n"
        "from service.tracing import active, configure_tracing, extra_installed\n"
        "import service.producer.client, service.replay.runner\n"
        "stream = io.StringIO()\n"
        "configure_logging(Settings(log_format='json'), stream=stream, warn_missing_key=False)\n"
        "structlog.stdlib.get_logger('t').info('hello')\n"
        "line = json.loads(stream.getvalue())\n"
        "print(extra_installed(), configure_tracing(Settings()), active(), 'trace_id' in line)\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "None", "None", "False"]


async def test_export_over_otlp_http_to_a_receiver_in_the_test(
    monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    """As a user's collector would receive it: POST /v1/traces, protobuf, decoded here."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "consumergen-otlp-test")
    consumer = str(uuid.uuid4())
    tracing = from_environment(b"otlp-key")
    assert tracing is not None
    with (
        tracing.tracer.start_as_current_span("process events", kind=SpanKind.CONSUMER) as parent,
        tracing.tracer.start_as_current_span(f"apply {consumer}") as child,
    ):
        child.set_attribute("consumer", consumer)
    # The exporter is synchronous (its own thread): flush off the loop that serves it.
    await asyncio.to_thread(tracing.shutdown)
    assert otlp_receiver.content_types == ["application/x-protobuf"]
    by_name = {span.name: (span, resource) for span, resource in otlp_receiver.spans()}
    mine = pseudonym(consumer, b"otlp-key")
    assert set(by_name) == {"process events", f"apply {mine}"}
    child_span, resource = by_name[f"apply {mine}"]
    parent_span, _ = by_name["process events"]
    assert child_span.trace_id == parent.get_span_context().trace_id.to_bytes(16, "big")
    assert child_span.parent_span_id == parent_span.span_id
    assert child_span.span_id == child.get_span_context().span_id.to_bytes(8, "big")
    assert {a.key: a.value.string_value for a in child_span.attributes} == {"consumer": mine}
    assert parent_span.kind == parent_span.SPAN_KIND_CONSUMER
    assert resource["service.name"] == "consumergen-otlp-test"
    assert find_clear_uuid(str(otlp_receiver.requests)) is None
