"""No UUID in any exported span: the redacting exporter, and the suite's span guard."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

from service.logging import Redactor, find_clear_uuid, pseudonym
from service.tracing.redaction import RedactingSpanExporter, span_strings
from service.tracing.sdk import build_tracing
from tests.tracing.conftest import KEY, Traced

TESTS_DIR = Path(__file__).resolve().parents[1]


def test_every_string_of_a_span_is_pseudonymised_with_the_logs_key() -> None:
    consumer, event = uuid.uuid4(), uuid.uuid4()
    exporter = InMemorySpanExporter()
    tracing = build_tracing([exporter], KEY, batch=False)
    assert tracing is not None
    linked = tracing.tracer.start_span("linked")
    linked.end()
    with tracing.tracer.start_as_current_span(
        f"apply {consumer}", links=[Link(linked.get_span_context(), {"of": str(event)})]
    ) as span:
        span.set_attribute("consumer", str(consumer))
        span.set_attribute("many", [consumer.hex, "plain", f"urn:uuid:{event}"])
        span.set_attribute(str(event), 1)
        span.add_event(f"retry {event}", {"why": f"race on {{{consumer}}}"})
        span.record_exception(KeyError(f"no consumer {str(consumer).upper()}"))
        span.set_status(StatusCode.ERROR, f"failed {consumer}")
    tracing.shutdown()
    [_, exported] = exporter.get_finished_spans()
    texts = span_strings(exported)
    assert all(find_clear_uuid(text) is None for text in texts), texts
    mine = pseudonym(consumer, KEY)
    assert exported.name == f"apply {mine}"
    assert exported.attributes is not None
    assert exported.attributes["consumer"] == mine
    assert exported.attributes["many"] == (mine, "plain", pseudonym(event, KEY))
    assert exported.attributes[pseudonym(event, KEY)] == 1
    [event_, exception] = exported.events
    assert event_.attributes is not None and event_.attributes["why"] == f"race on {mine}"
    assert exception.name == "exception"
    assert exception.attributes is not None
    assert mine in str(exception.attributes["exception.message"])
    assert mine in str(exception.attributes["exception.stacktrace"])
    assert exported.status.description == f"failed {mine}"
    assert exported.links[0].attributes == {"of": pseudonym(event, KEY)}
    # The identity of the span is untouched.
    assert exported.context == span.get_span_context()


def test_the_exporter_does_not_modify_the_span_it_is_given() -> None:
    consumer = str(uuid.uuid4())
    inner = InMemorySpanExporter()
    tracing = build_tracing([], KEY, batch=False)
    assert tracing is not None
    span = tracing.tracer.start_span(consumer, attributes={"c": consumer})
    span.end()
    RedactingSpanExporter(inner, Redactor(KEY)).export([span])  # type: ignore[list-item]
    assert span.name == consumer  # type: ignore[attr-defined]
    assert inner.get_finished_spans()[0].name == pseudonym(consumer, KEY)


def test_the_services_own_spans_set_pseudonyms_themselves(traced: Traced) -> None:
    consumer = str(uuid.uuid4())
    assert traced.tracing.pseudonym(consumer) == pseudonym(consumer, KEY)
    assert traced.tracing.pseudonym(f"x {consumer} y") == f"x {pseudonym(consumer, KEY)} y"


# A made-up UUID: the inner run is meant to show it.
FAKE = "00000000-1111-4222-8333-444444444444"


def _run_inner(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["span_guard"]\n')
    (tmp_path / "test_inner.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{TESTS_DIR.parent}"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_INNER_SETUP = (
    "from opentelemetry.sdk.trace import TracerProvider\n"
    "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
    "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
    "from service.tracing.sdk import build_tracing\n"
)


def test_the_guard_fails_the_test_and_the_run_on_a_planted_uuid(tmp_path: Path) -> None:
    """A span that reaches an exporter around the redaction (a bare SDK provider)."""
    result = _run_inner(
        tmp_path,
        _INNER_SETUP + "def test_bypass():\n"
        "    provider = TracerProvider()\n"
        "    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))\n"
        "    with provider.get_tracer('t').start_as_current_span('apply') as span:\n"
        f"        span.set_attribute('consumer', '{FAKE}')\n"
        "def test_innocent():\n"
        "    pass\n",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    # Two: the planted attribute, and the SDK's own service.instance.id (a random UUID
    # in the resource, which the service's exporter pseudonymises too).
    assert "span guard: 2 clear UUID(s) in exported spans" in result.stdout
    assert (
        "span guard: LEAK during test_inner.py::test_bypass: InMemorySpanExporter: "
        "span 'apply': <CLEAR-UUID>"
    ) in result.stdout
    assert FAKE not in result.stdout


def test_the_guard_passes_a_run_whose_spans_went_through_the_service(tmp_path: Path) -> None:
    result = _run_inner(
        tmp_path,
        _INNER_SETUP + "def test_service_tracing():\n"
        "    exporter = InMemorySpanExporter()\n"
        "    tracing = build_tracing([exporter], b'k', batch=False)\n"
        "    with tracing.tracer.start_as_current_span('apply') as span:\n"
        f"        span.set_attribute('consumer', '{FAKE}')\n"
        "    assert len(exporter.get_finished_spans()) == 1\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "span guard: scanned 2 exported spans, 2 with pseudonyms; 0 leak(s)" in result.stdout
