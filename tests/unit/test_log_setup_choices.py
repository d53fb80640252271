"""What ``configure_logging`` chooses: the renderer for the stream and settings, colours on
a terminal only, Python warnings as log records, and the pseudonym key and its warning.

An operator reads JSON lines from a daemon under a supervisor and readable lines on a
terminal; these are the choices that decide which, tested through what comes out.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

import service.logging.setup as log_setup
from service.config import Settings
from service.logging import Redactor, build_formatter, configure_logging

ANSI = "\x1b["
CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's shell is."""

    def isatty(self) -> bool:
        return True


class BareStream:
    """A writable stream with nothing but ``write`` and ``flush`` (no ``isatty``)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"log_redaction_key": SecretStr("choices-key"), "log_format": "auto"}
    values.update(overrides)
    return Settings(**values)


def emit() -> None:
    structlog.stdlib.get_logger("service.x").warning("something_happened", count=2)


def test_auto_on_a_terminal_is_the_console_renderer_in_colour(restore_log_guard: None) -> None:
    terminal = Terminal()
    configure_logging(settings(), stream=terminal)
    emit()
    text = terminal.getvalue()
    assert not text.startswith("{") and "something_happened" in text
    assert ANSI in text


def test_auto_on_a_stream_that_cannot_say_is_json(restore_log_guard: None) -> None:
    stream = BareStream()
    configure_logging(settings(), stream=stream)  # type: ignore[arg-type]
    emit()
    (line,) = "".join(stream.parts).splitlines()
    assert json.loads(line)["event"] == "something_happened"


def test_json_forced_wins_over_a_console_setting(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(log_format="console"), stream=buffer, force_format="json")
    emit()
    (line,) = buffer.getvalue().splitlines()
    assert json.loads(line)["count"] == 2


def test_a_console_setting_on_a_file_has_no_colour(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(log_format="console"), stream=buffer)
    emit()
    assert "something_happened" in buffer.getvalue() and ANSI not in buffer.getvalue()


def _render(formatter: logging.Formatter) -> str:
    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    return formatter.format(record)


def test_the_formatter_renders_json_unless_told_otherwise_and_colour_only_when_asked() -> None:
    redactor = Redactor(b"k")
    assert json.loads(_render(build_formatter(redactor)))["event"] == "a b"
    plain = _render(build_formatter(redactor, "console"))
    assert "a b" in plain and ANSI not in plain
    assert ANSI in _render(build_formatter(redactor, "console", colors=True))


def test_python_warnings_become_log_records(restore_log_guard: None) -> None:
    buffer = io.StringIO()
    configure_logging(settings(log_format="json"), stream=buffer)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecated option", DeprecationWarning, stacklevel=1)
    (line,) = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert (line["logger"], line["level"]) == ("py.warnings", "warning")
    assert "DeprecationWarning: a deprecated option" in line["event"]


def test_the_missing_key_warning_says_what_it_costs(
    restore_log_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_setup._KeyState, "warned", False)
    buffer = io.StringIO()
    configure_logging(settings(log_redaction_key=None, log_format="json"), stream=buffer)
    (warning,) = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert warning["detail"] == (
        "CONSUMERGEN_LOG_REDACTION_KEY is not set: UUID pseudonyms use a random "
        "per-process key and cannot be matched across restarts or computed by operators"
    )


def test_a_configured_key_is_used_and_never_warned_about(
    restore_log_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_setup._KeyState, "warned", False)
    buffer = io.StringIO()
    configure_logging(settings(log_format="json"), stream=buffer)
    assert buffer.getvalue() == ""
    assert log_setup.active_redaction_key(settings()) == b"choices-key"


def test_without_a_key_the_process_keeps_one_random_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_setup._KeyState, "random_key", None)
    first = log_setup.active_redaction_key(settings(log_redaction_key=None))
    assert isinstance(first, bytes) and len(first) == 32
    assert log_setup.active_redaction_key(settings(log_redaction_key=SecretStr(""))) == first


def test_structlog_from_its_own_defaults_is_pointed_at_the_redacting_handler(
    restore_log_guard: None,
) -> None:
    # A fresh process starts with structlog's defaults (print to stdout, unredacted);
    # configure_logging must route it through the standard library's handler.
    structlog.reset_defaults()
    buffer = io.StringIO()
    configure_logging(settings(log_format="json"), stream=buffer)
    structlog.get_logger("service.x").warning("routed", consumer=CONSUMER)
    (line,) = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert (line["event"], line["logger"], line["level"]) == ("routed", "service.x", "warning")
    assert line["consumer"].startswith("uuid:") and CONSUMER not in buffer.getvalue()


def test_sqlalchemy_s_own_echo_handler_is_replaced_by_configure_logging(
    restore_log_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh process has SQLAlchemy's own hook, which gives an echoing engine's logger a
    # raw stdout handler (SQL parameters unredacted); the test session's guard replaced
    # it at start, so the test puts a stand-in for the original back first.
    import sqlalchemy.log

    def sqlalchemy_default(logger: logging.Logger) -> None:
        logger.addHandler(logging.StreamHandler(io.StringIO()))

    monkeypatch.setattr(sqlalchemy.log, "_add_default_handler", sqlalchemy_default)
    configure_logging(settings(log_format="json"), stream=io.StringIO())
    echoing = logging.getLogger("test.sqlalchemy.echo")
    try:
        sqlalchemy.log._add_default_handler(echoing)
        assert echoing.handlers == []
    finally:
        for handler in list(echoing.handlers):
            echoing.removeHandler(handler)
