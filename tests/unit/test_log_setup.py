"""configure_logging end to end: structlog and library records, rendered and redacted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
import stamina
import structlog
from pydantic import SecretStr

import service.logging.setup as log_setup
from service.config import Settings
from service.logging import LogHandler, configure_logging, find_clear_uuid

KEY = "setup-test-key"
U = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
# A UUID written in this file's source, so it also shows in rendered tracebacks.
LITERAL = "6f1c7b52-3d3e-4d8a-9a57-1b0e2f4c5d6e"


def expected(u: uuid.UUID | str, key: str = KEY) -> str:
    digest = hmac.new(key.encode(), str(uuid.UUID(str(u))).encode(), hashlib.sha256)
    return "uuid:" + digest.hexdigest()[:12]


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"log_redaction_key": SecretStr(KEY), "log_format": "json"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def sink(restore_log_guard: None) -> Iterator[io.StringIO]:
    """Logging configured as the service does, into a buffer; the guard's set-up after."""
    buffer = io.StringIO()
    configure_logging(settings(), stream=buffer)
    yield buffer


@pytest.fixture(autouse=True)
def _without_log_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about redaction and format, not ``service.daemon.log_limits``,
    whose repeat limiter stays on aiokafka's loggers for the rest of a process once any
    test installs it: a line this file logged in an earlier run in the same process
    (mutmut runs every test twice in one) would be held back as a repeat."""
    for name in ("aiokafka", "aiokafka.consumer.group_coordinator"):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert find_clear_uuid(text) is None, "a UUID left in clear"
    return [json.loads(line) for line in text.splitlines()]


def test_structlog_event_is_one_redacted_json_line(sink: io.StringIO) -> None:
    log = structlog.stdlib.get_logger("service.daemon")
    structlog.contextvars.bind_contextvars(batch_consumer=str(U))
    try:
        log.info("batch_applied", consumer=U, events=3, first=U.hex)
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines(sink)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert line["timestamp"].endswith("Z")
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() == timedelta(0)
    assert line["level"] == "info" and line["logger"] == "service.daemon"
    assert line["event"] == "batch_applied" and line["events"] == 3
    assert line["consumer"] == line["first"] == line["batch_consumer"] == expected(U)


def test_exception_message_and_traceback_are_redacted(sink: io.StringIO) -> None:
    log = structlog.stdlib.get_logger("service.apply")
    try:
        raise KeyError("6f1c7b52-3d3e-4d8a-9a57-1b0e2f4c5d6e")
    except KeyError:
        log.exception("apply_failed", consumer=str(U))
    (line,) = lines(sink)
    assert line["level"] == "error"
    assert "Traceback (most recent call last)" in line["exception"]
    # The message and the quoted source line both carried the UUID.
    assert line["exception"].count(expected(LITERAL)) == 2


@pytest.mark.parametrize(
    "name", ["aiokafka.consumer.group_coordinator", "alembic.runtime.migration", "stamina"]
)
def test_foreign_library_records_are_redacted_alike(sink: io.StringIO, name: str) -> None:
    logging.getLogger(name).warning("member %s joined group %r", f"aiokafka-0.14-{U}", U.hex)
    (line,) = lines(sink)
    assert line["logger"] == name and line["level"] == "warning"
    assert line["event"] == f"member aiokafka-0.14-{expected(U)} joined group '{expected(U)}'"
    assert "timestamp" in line


def test_sqlalchemy_parameters_are_redacted(sink: io.StringIO) -> None:
    logging.getLogger("sqlalchemy.engine.Engine").warning(
        "[generated in %.5fs] %r", 0.0001, (U, str(U), 7)
    )
    (line,) = lines(sink)
    p = expected(U)
    assert line["event"] == f"[generated in 0.00010s] (UUID('{p}'), '{p}', 7)"


def test_sqlalchemy_echo_goes_through_the_root_handler(
    sink: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = sqlalchemy.create_engine("sqlite://", echo=True)
    try:
        with engine.connect() as conn:
            value = conn.execute(sqlalchemy.text("select :id"), {"id": str(U)}).scalar()
    finally:
        engine.dispose()
    assert value == str(U)
    records = lines(sink)
    assert any(expected(U) in line["event"] for line in records)
    assert all(line["logger"].startswith("sqlalchemy.engine") for line in records)
    # echo=True did not get its own raw stdout handler.
    assert capsys.readouterr().out == ""
    assert logging.getLogger("sqlalchemy.engine.Engine").handlers == []


def test_asyncio_unretrieved_task_exception_is_redacted(sink: io.StringIO) -> None:
    async def fail() -> None:
        raise RuntimeError(f"lost {U}")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        loop = asyncio.get_running_loop()
        loop.call_exception_handler(
            {"message": "Task exception was never retrieved", "exception": task.exception()}
        )

    asyncio.run(main())
    (line,) = lines(sink)
    assert line["logger"] == "asyncio" and line["level"] == "error"
    assert f"RuntimeError: lost {expected(U)}" in line["exception"]


def test_stamina_retry_log_is_redacted(sink: io.StringIO) -> None:
    calls: list[uuid.UUID] = []

    @stamina.retry(on=ValueError, attempts=2, wait_initial=0, wait_max=0, wait_jitter=0)
    def flaky(consumer: uuid.UUID) -> None:
        calls.append(consumer)
        if len(calls) == 1:
            raise ValueError(str(consumer))

    flaky(U)
    assert calls == [U, U]
    records = lines(sink)
    assert records, "stamina logged its retry"
    assert any(expected(U) in json.dumps(line) for line in records)


def test_console_renderer_is_redacted_too(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(log_format="console"), stream=buffer)
    log = structlog.stdlib.get_logger("service.cli")
    try:
        raise ValueError(str(U))
    except ValueError:
        log.exception("failed", consumer=U)
    logging.getLogger("aiokafka").info("joined as %s", U)
    text = buffer.getvalue()
    assert find_clear_uuid(text) is None
    assert text.count(expected(U)) == 3
    assert "ValueError" in text and "{" not in text.splitlines()[0]


def test_auto_format_is_json_off_a_terminal_and_force_format_wins(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(log_format="auto"), stream=buffer)
    logging.getLogger("x").warning("one")
    configure_logging(settings(log_format="json"), stream=buffer, force_format="console")
    logging.getLogger("x").warning("two")
    first, second = buffer.getvalue().splitlines()
    assert json.loads(first)["event"] == "one"
    assert not second.startswith("{") and " two " in second and second.endswith("[x]")


def test_idempotent_one_handler_and_level_from_settings(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(), stream=buffer)
    configure_logging(settings(log_level="WARNING"), stream=buffer)
    root = logging.getLogger()
    assert len([h for h in root.handlers if isinstance(h, LogHandler)]) == 1
    structlog.stdlib.get_logger("x").info("hidden")
    logging.getLogger("x").info("hidden too")
    structlog.stdlib.get_logger("x").warning("shown")
    assert [line["event"] for line in lines(buffer)] == ["shown"]


def test_default_stream_is_the_current_stderr(
    restore_log_guard: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(settings())
    structlog.stdlib.get_logger("x").warning("to stderr", consumer=U)
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err)["consumer"] == expected(U)


def test_missing_key_random_per_process_and_warned_once(
    restore_log_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_setup._KeyState, "random_key", None)
    monkeypatch.setattr(log_setup._KeyState, "warned", False)
    buffer = io.StringIO()
    configure_logging(settings(log_redaction_key=None), stream=buffer)
    configure_logging(settings(log_redaction_key=SecretStr("")), stream=buffer)
    structlog.stdlib.get_logger("x").warning("event", consumer=U)
    warning, event = lines(buffer)
    assert warning["event"] == "log_redaction_key_missing" and warning["level"] == "warning"
    assert "CONSUMERGEN_LOG_REDACTION_KEY" in warning["detail"]
    key = log_setup._KeyState.random_key
    assert key is not None and len(key) == 32
    digest = hmac.new(key, str(U).encode(), hashlib.sha256).hexdigest()[:12]
    assert event["consumer"] == "uuid:" + digest != expected(U)


def test_different_keys_give_different_pseudonyms(restore_log_guard: None) -> None:
    seen = []
    for key in ("key-one", "key-two"):
        buffer = io.StringIO()
        configure_logging(settings(log_redaction_key=SecretStr(key)), stream=buffer)
        structlog.stdlib.get_logger("x").warning("e", consumer=U)
        seen.append(lines(buffer)[0]["consumer"])
    assert seen == [expected(U, "key-one"), expected(U, "key-two")]


def test_unformattable_record_gives_a_fixed_line_not_a_raw_dump(
    sink: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("lib").warning("%s and %s", str(U))  # one argument short
    (line,) = lines(sink)
    assert line == {
        "event": "log record could not be formatted",
        "logger": "lib",
        "level": "warning",
        "error": "TypeError",
    }
    assert "Logging error" not in capsys.readouterr().err


def test_uncaught_exception_hook_logs_redacted(sink: io.StringIO) -> None:
    try:
        raise LookupError(str(U))
    except LookupError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    (line,) = lines(sink)
    assert line["event"] == "uncaught_exception" and line["level"] == "critical"
    assert f"LookupError: {expected(U)}" in line["exception"]


def test_an_interrupt_is_shown_as_python_shows_it_not_logged(
    sink: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C is the person's own act, not a failure to record: Python's usual traceback
    # on stderr, no critical log line.
    def interrupted() -> None:
        raise KeyboardInterrupt("stopped by hand")

    try:
        interrupted()
    except KeyboardInterrupt as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert lines(sink) == []
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n"), err
    assert "in interrupted\n" in err
    assert err.endswith("KeyboardInterrupt: stopped by hand\n"), err


def _failure_in_a_thread(error: BaseException | None) -> threading.ExceptHookArgs:
    """What the threading module hands its hook when ``error`` escapes a thread."""
    caught: list[threading.ExceptHookArgs] = []

    def work() -> None:
        try:
            if error is not None:
                raise error
        except BaseException:
            caught.append(threading.ExceptHookArgs((*sys.exc_info(), threading.current_thread())))
        else:
            caught.append(threading.ExceptHookArgs((None, None, None, threading.current_thread())))

    thread = threading.Thread(target=work, name="reply-listener")
    thread.start()
    thread.join()
    return caught[0]


def test_an_exception_escaping_a_thread_is_logged_redacted_with_the_thread_s_name(
    sink: io.StringIO,
) -> None:
    # configure_logging installs the hook (pytest swaps its own in around each test
    # phase, so the test calls the one installed at set-up).
    assert threading.excepthook is log_setup._log_uncaught_in_thread
    log_setup._log_uncaught_in_thread(_failure_in_a_thread(LookupError(str(U))))
    (line,) = lines(sink)
    assert (line["event"], line["level"], line["thread"]) == (
        "uncaught_exception_in_thread",
        "critical",
        "reply-listener",
    )
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith(f"LookupError: {expected(U)}")
    assert "in work" in line["exception"]


def test_a_thread_hook_call_without_an_exception_logs_nothing(sink: io.StringIO) -> None:
    log_setup._log_uncaught_in_thread(_failure_in_a_thread(None))
    assert lines(sink) == []
