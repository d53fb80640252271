"""Whole-suite log guard (a pytest plugin): no UUID may appear in clear in any log output.

How it works:

* At session start a ``GuardHandler`` joins the root logger. It formats every record
  (structlog's and every library's) with the service's own redacting formatter and
  scans each rendered line. structlog is pointed at the standard library as the
  service does, so every structlog event reaches it too.
* pytest's own log capture (the "Captured log" report sections, ``caplog.text``, the
  log file and live-log handlers) is switched to the same redacting formatter, so
  failure reports show redacted JSON lines instead of raw records; those sections
  and every "Captured stderr" section are scanned as well (a CLI run in-process, or a
  subprocess writing to the inherited stderr, lands there).
* Tests that capture output elsewhere (a subprocess's piped stderr) feed it in with
  ``scan_external(text, source)``.
* After each test it checks every logger's handlers: a handler that is neither a
  ``NullHandler`` nor formats through ``RedactingFormatter`` (``basicConfig``,
  alembic's ``fileConfig``, SQLAlchemy's echo handler) would print raw records, so
  it is removed and the test fails. Then it restores the session's configuration
  (structlog, root level, the guard's handler) so a test that reconfigured logging
  cannot blind the rest of the run; ``restore_log_guard`` does the same on demand.
* A line's ``trace_id`` field (the active span's, ``service/logging/trace_ids.py``) is
  the one 32-hex text allowed; it is cut out before the scan.
* A clear UUID fails the test during which it was emitted, and the session (exit
  status 1) whenever it was emitted. The guard cannot pass vacuously: it emits one
  warm-up line with a random UUID at start and stops the run unless that line came
  out with the expected pseudonym; at the end it requires lines with pseudonyms and
  reports how many came from the tests themselves.

Leak reports never repeat the UUID: excerpts show ``<CLEAR-UUID>`` in its place.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
import threading
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import structlog

from service.logging import (
    CLEAR_UUID_RE,
    PSEUDONYM_RE,
    TRACE_ID_FIELD_RE,
    RedactingFormatter,
    Redactor,
    build_formatter,
    configure_structlog,
    route_library_logging,
)

#: The HMAC key of the guard's formatter (a test value, not a secret).
GUARD_KEY = "consumergen-test-suite-log-guard"
#: Root level during the session: what a default service run emits.
GUARD_LEVEL = logging.INFO
_EXCERPT = 80


@dataclass
class Leak:
    """One clear UUID seen in output (the excerpt has it masked)."""

    source: str
    where: str
    excerpt: str


@dataclass
class _State:
    records: int = 0  # rendered log lines from the guard's own handler
    record_pseudonyms: int = 0
    test_records: int = 0  # the same, without the warm-up
    test_record_pseudonyms: int = 0
    other_lines: int = 0  # pytest's captured sections and scan_external text
    leaks: list[Leak] = field(default_factory=list)
    warmup_error: str | None = None
    where: str = "session start"
    in_warmup: bool = False
    warmup_lines: list[str] = field(default_factory=list)
    pending: list[Leak] = field(default_factory=list)


_state = _State()
_lock = threading.Lock()


def _mask(text: str) -> str:
    return CLEAR_UUID_RE.sub("<CLEAR-UUID>", text)


def _scan(text: str, source: str, *, from_handler: bool = False) -> None:
    with _lock:
        for line in text.splitlines():
            has_pseudonym = PSEUDONYM_RE.search(line) is not None
            if not from_handler:
                _state.other_lines += 1
            elif _state.in_warmup:
                _state.warmup_lines.append(line)
            else:
                _state.test_records += 1
                _state.test_record_pseudonyms += has_pseudonym
            if from_handler:
                _state.records += 1
                _state.record_pseudonyms += has_pseudonym
            # The active span's trace id is the one 32-hex text a line may hold
            # (service/logging/trace_ids.py); anything else 32-hex is a leak.
            match = CLEAR_UUID_RE.search(TRACE_ID_FIELD_RE.sub("trace_id", line))
            if match is not None:
                start = max(0, match.start() - _EXCERPT)
                leak = Leak(source, _state.where, _mask(line[start : match.end() + _EXCERPT]))
                _state.leaks.append(leak)
                _state.pending.append(leak)


def scan_external(text: str, source: str) -> None:
    """Scan output captured outside the logging system (e.g. a subprocess's stderr)."""
    _scan(text, source)


class GuardHandler(logging.Handler):
    """Renders every record exactly as the service would and scans the result."""

    def emit(self, record: logging.LogRecord) -> None:
        _scan(self.format(record), f"logger {record.name!r}", from_handler=True)


_handler = GuardHandler()
_handler.setFormatter(build_formatter(Redactor(GUARD_KEY.encode()), "json"))
_saved_hooks = (sys.excepthook, threading.excepthook)


def _is_safe(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.NullHandler) or isinstance(
        handler.formatter, RedactingFormatter
    )


def _unsafe_handlers() -> list[str]:
    """Remove and name every handler that would render records without redaction."""
    found = []
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if not _is_safe(handler):
                logger.removeHandler(handler)
                found.append(f"{type(handler).__name__} on logger {logger.name!r}")
    return found


def restore() -> None:
    """Put back the guard's logging configuration (after a test reconfigured logging)."""
    configure_structlog()
    route_library_logging()  # as configure_logging does: SQLAlchemy echo via the root
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
    root.setLevel(GUARD_LEVEL)
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook = _saved_hooks
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.disabled:
            logger.disabled = False  # e.g. fileConfig(disable_existing_loggers=True)


@contextmanager
def guard_restored() -> Iterator[None]:
    """Run a block that reconfigures logging, then restore the guard's configuration."""
    try:
        yield
    finally:
        restore()


@pytest.fixture
def restore_log_guard() -> Iterator[None]:
    """For tests that call ``configure_logging``: the guard's set-up is back afterwards."""
    with guard_restored():
        yield


def _warm_up() -> None:
    """Emit one line with a random UUID through structlog and check it came out redacted."""
    probe = uuid.uuid4()
    digest = hmac.new(GUARD_KEY.encode(), str(probe).encode(), hashlib.sha256).hexdigest()
    expected = "uuid:" + digest[:12]
    leaks_before = len(_state.leaks)
    _state.in_warmup = True
    try:
        structlog.stdlib.get_logger("log_guard").warning(f"warm-up {probe}", probe=probe.hex)
    finally:
        _state.in_warmup = False
    lines = _state.warmup_lines
    if len(lines) != 1:
        _state.warmup_error = f"the warm-up produced {len(lines)} lines instead of 1"
    elif len(_state.leaks) != leaks_before or lines[0].count(expected) != 2:
        _state.warmup_error = "the warm-up line did not come out with the expected pseudonym"


@pytest.hookimpl(trylast=True)  # after the logging plugin has registered itself
def pytest_configure(config: pytest.Config) -> None:
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    if logging_plugin is None:
        return
    # Raw records in failure reports would bypass redaction: render them as the service does.
    formatter = build_formatter(Redactor(GUARD_KEY.encode()), "json")
    logging_plugin.formatter = formatter
    for name in ("caplog_handler", "report_handler", "log_file_handler", "log_cli_handler"):
        handler = getattr(logging_plugin, name, None)
        if isinstance(handler, logging.Handler):
            handler.setFormatter(formatter)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Counts and leaks are per session: a process may run several (scripts/mutation's
    # mutmut runs pytest again and again in one process and its forks).
    global _state
    _state = _State()
    restore()
    _warm_up()
    if _state.warmup_error is not None:
        pytest.exit(f"log guard: {_state.warmup_error}", returncode=pytest.ExitCode.INTERNAL_ERROR)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _state.where = nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    suffix = f" {call.when}"
    for title, content in report.sections:
        if title.endswith(suffix) and title.startswith(("Captured log", "Captured stderr")):
            _scan(content, title)
    problems = [f"{len(_state.pending)} clear UUID(s) in log output:"] if _state.pending else []
    problems += [f"  {leak.source}: {leak.excerpt}" for leak in _state.pending]
    _state.pending.clear()
    if call.when == "teardown":
        for handler in _unsafe_handlers():
            problems.append(f"unredacted log handler (removed): {handler}")
            _state.leaks.append(Leak(handler, item.nodeid, "unredacted handler"))
        restore()
    if problems:
        report.outcome = "failed"
        previous = f"{report.longrepr}\n\n" if report.longrepr else ""
        report.longrepr = previous + "log guard: " + "\n".join(problems)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _state.where = "session finish"
    for handler in _unsafe_handlers():
        _state.leaks.append(Leak(handler, "session", "unredacted handler"))
    if _state.leaks or _state.record_pseudonyms == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write = terminalreporter.write_line
    write(
        f"log guard: scanned {_state.records} log records ({_state.test_records} from tests), "
        f"{_state.record_pseudonyms} with pseudonyms ({_state.test_record_pseudonyms} from tests), "
        f"and {_state.other_lines} lines of captured sections and external output; "
        f"{len(_state.leaks)} leak(s)"
    )
    if _state.record_pseudonyms == 0:
        write("log guard: FAILED: no line with a pseudonym was seen, the check proved nothing")
    for leak in _state.leaks:
        write(f"log guard: LEAK during {leak.where} from {leak.source}: {leak.excerpt}")
