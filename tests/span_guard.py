"""Whole-suite span guard (a pytest plugin): no UUID may appear in clear in any exported span.

The twin of ``log_guard``, for traces.  At session start it wraps ``export`` of every
span exporter a test can end in (the SDK's in-memory and console exporters, the
OTLP/HTTP exporter): every span handed to one of them, which is what a collector
would receive, is scanned, every string of it (name, attributes, events with recorded
exceptions, links, status, resource: ``service.tracing.redaction.span_strings``).  The
service wraps each exporter in ``RedactingSpanExporter``, so a clear UUID here means a
span reached an exporter around that guard, or the guard missed a form.

A clear UUID fails the test during which it was exported, and the session.  It cannot
pass vacuously: a warm-up span with a random UUID planted in its name, an attribute,
an event and a recorded exception goes through ``build_tracing`` at start, and the run
stops unless the guard saw it with the expected pseudonym and no leak; the summary
says how many spans it scanned.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.logging import CLEAR_UUID_RE, PSEUDONYM_RE
from service.tracing.redaction import span_strings
from service.tracing.sdk import build_tracing

#: The HMAC key of the warm-up's tracing (a test value, not a secret).
GUARD_KEY = "consumergen-test-suite-span-guard"
#: The exporters every exported span ends in.
GUARDED: tuple[type[SpanExporter], ...] = (
    InMemorySpanExporter,
    ConsoleSpanExporter,
    OTLPSpanExporter,
)
_EXCERPT = 60


@dataclass
class _State:
    spans: int = 0
    spans_with_pseudonyms: int = 0
    leaks: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    where: str = "session start"
    warmup_error: str | None = None


_state = _State()
_lock = threading.Lock()
_originals: dict[type[SpanExporter], Callable[..., SpanExportResult]] = {}


def scan_spans(spans: Sequence[ReadableSpan], source: str) -> None:
    """Scan spans about to be exported (the wrapped exporters call it)."""
    with _lock:
        for span in spans:
            _state.spans += 1
            texts = span_strings(span)
            own = span_strings(span, resource=False)
            _state.spans_with_pseudonyms += any(PSEUDONYM_RE.search(t) for t in own)
            for text in texts:
                match = CLEAR_UUID_RE.search(text)
                if match is not None:
                    start = max(0, match.start() - _EXCERPT)
                    excerpt = CLEAR_UUID_RE.sub(
                        "<CLEAR-UUID>", text[start : match.end() + _EXCERPT]
                    )
                    name = CLEAR_UUID_RE.sub("<CLEAR-UUID>", span.name)
                    leak = f"{source}: span {name!r}: {excerpt}"
                    _state.leaks.append(f"during {_state.where}: {leak}")
                    _state.pending.append(leak)


def _guarded(cls: type[SpanExporter]) -> Callable[..., SpanExportResult]:
    original = _originals[cls]

    def export(
        self: SpanExporter, spans: Sequence[ReadableSpan], *args: Any, **kwargs: Any
    ) -> SpanExportResult:
        scan_spans(spans, cls.__name__)
        return original(self, spans, *args, **kwargs)

    return export


def install() -> None:
    for cls in GUARDED:
        if cls not in _originals:
            _originals[cls] = cls.export  # type: ignore[assignment]
            cls.export = _guarded(cls)  # type: ignore[method-assign]


def _warm_up() -> None:
    probe = uuid.uuid4()
    digest = hmac.new(GUARD_KEY.encode(), str(probe).encode(), hashlib.sha256).hexdigest()
    expected = "uuid:" + digest[:12]
    exporter = InMemorySpanExporter()
    tracing = build_tracing([exporter], GUARD_KEY.encode(), batch=False)
    if tracing is None:
        _state.warmup_error = "tracing is disabled (OTEL_SDK_DISABLED?): nothing would be scanned"
        return
    before = (_state.spans, len(_state.leaks))
    with tracing.tracer.start_as_current_span(f"warm-up {probe}") as span:
        span.set_attribute("probe", probe.hex)
        span.add_event("event", {"probe": str(probe).upper()})
        span.record_exception(ValueError(f"no consumer {probe}"))
    tracing.shutdown()
    [exported] = exporter.get_finished_spans() or [None]
    if _state.spans != before[0] + 1 or exported is None:
        _state.warmup_error = "the warm-up span did not pass the guarded exporter"
    elif len(_state.leaks) != before[1]:
        _state.warmup_error = "the warm-up span came out with a clear UUID"
    elif sum(text.count(expected) for text in span_strings(exported)) < 4:
        _state.warmup_error = "the warm-up span did not come out with the expected pseudonym"


def pytest_sessionstart(session: pytest.Session) -> None:
    global _state
    _state = _State()
    install()
    _warm_up()
    if _state.warmup_error is not None:
        pytest.exit(f"span guard: {_state.warmup_error}", returncode=pytest.ExitCode.INTERNAL_ERROR)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _state.where = nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    with _lock:
        pending, _state.pending[:] = list(_state.pending), []
    if pending:
        report.outcome = "failed"
        previous = f"{report.longrepr}\n\n" if report.longrepr else ""
        lines = "\n".join(f"  {leak}" for leak in pending)
        report.longrepr = (
            f"{previous}span guard: {len(pending)} clear UUID(s) in exported spans:\n{lines}"
        )
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _state.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write = terminalreporter.write_line
    write(
        f"span guard: scanned {_state.spans} exported spans, "
        f"{_state.spans_with_pseudonyms} with pseudonyms; {len(_state.leaks)} leak(s)"
    )
    for leak in _state.leaks:
        write(f"span guard: LEAK {leak}")
