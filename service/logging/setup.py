"""The one logging set-up of every entry point: structlog and stdlib through one formatter.

structlog events are handed to the standard library (``wrap_for_formatter``) and every
record, ours or a library's (aiokafka, SQLAlchemy, asyncio, alembic, stamina), is
rendered by one ``ProcessorFormatter`` on the root logger's handler, whose chain ends
with exception rendering, then redaction, then the renderer. So nothing reaches the
output without passing the redactor last, whoever logged it.

The structlog-side chain never depends on the settings: loggers cached before a
reconfiguration keep working, and everything configurable (level, key, renderer,
stream) lives on the root logger and its handler, replaced as one on every call.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor

from service.config import Settings
from service.logging.redaction import Redactor
from service.logging.trace_ids import KeepingTraceIds, add_trace_ids

Renderer = Literal["json", "console"]

_log = structlog.stdlib.get_logger("service.logging")

#: Added to every record, structlog's or a library's, before the formatter's chain.
_PRE_CHAIN: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    add_trace_ids,  # the active span's ids (service/logging/trace_ids.py)
)

#: structlog side: filter early, add context, hand over to the stdlib handler.
_STRUCTLOG_CHAIN: tuple[Processor, ...] = (
    structlog.stdlib.filter_by_level,
    *_PRE_CHAIN,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.StackInfoRenderer(),
    ProcessorFormatter.wrap_for_formatter,
)


_LEAD_KEYS = ("timestamp", "level", "logger", "event")


def _lead_keys_first(_: object, __: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, logger and event first, so lines read alike whoever logged."""
    ordered = {key: event_dict.pop(key) for key in _LEAD_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


class RedactingFormatter(ProcessorFormatter):
    """``ProcessorFormatter`` that never raises and so never triggers ``handleError``.

    The stdlib's ``Handler.handleError`` prints the raw message and arguments to
    stderr, unredacted; a record that cannot be formatted (bad %-arguments, say)
    becomes a fixed, redacted line instead.
    """

    def __init__(self, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except Exception as exc:
            return json.dumps(
                {
                    "event": "log record could not be formatted",
                    "logger": self.redactor.redact_text(str(record.name)),
                    "level": str(record.levelname).lower(),
                    "error": type(exc).__name__,
                }
            )


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's root handler; without a stream it writes to the *current* stderr.

    Resolving ``sys.stderr`` at each emit (like the stdlib's last-resort handler)
    keeps output correct when a test runner or click's CliRunner swaps the stream.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._fixed_stream = stream
        super().__init__(stream)

    @property
    def stream(self) -> TextIO:
        return self._fixed_stream if self._fixed_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        """``StreamHandler`` assigns the stream itself; only an explicit one is kept."""


class LibraryQuiet(logging.Filter):
    """A command-line verb prints what the person asked for: other libraries' records
    below WARNING (alembic's "Running upgrade", aiokafka's connection chatter) are
    dropped; the service's own records and every warning pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name == "service" or record.name.startswith("service.")


def build_formatter(
    redactor: Redactor, renderer: Renderer = "json", *, colors: bool = False
) -> RedactingFormatter:
    """The formatter rendering any record: exceptions to text, then redaction, then render.

    Exposed so other handlers (the test suite's guard, pytest's log capture) render
    exactly as the service does.
    """
    final: Processor = (
        structlog.processors.JSONRenderer()
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    )
    processors: Sequence[Processor] = (
        ProcessorFormatter.remove_processors_meta,
        _lead_keys_first,
        # Tracebacks must be text before the redactor sees them: a renderer that
        # formats exc_info itself would run after redaction.
        structlog.processors.format_exc_info,
        # Last before rendering, so no processor can add a UUID after it; only the
        # active span's trace_id and span_id pass it (trace_ids.py says why).
        KeepingTraceIds(redactor),
        final,
    )
    return RedactingFormatter(
        redactor, processors=processors, foreign_pre_chain=_PRE_CHAIN, use_get_message=True
    )


def configure_structlog() -> None:
    """Point structlog at the standard library; idempotent and settings-independent."""
    structlog.configure(
        processors=list(_STRUCTLOG_CHAIN),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class _KeyState:
    """The per-process random key and whether its warning has been given."""

    random_key: bytes | None = None
    warned = False


def redaction_key(settings: Settings) -> bytes | None:
    """The configured HMAC key (UTF-8 bytes of the setting), or None when unset or empty."""
    secret = settings.log_redaction_key
    if secret is None or not secret.get_secret_value():
        return None
    return secret.get_secret_value().encode()


def _key_for(settings: Settings) -> tuple[bytes, bool]:
    key = redaction_key(settings)
    if key is not None:
        return key, False
    if _KeyState.random_key is None:
        _KeyState.random_key = secrets.token_bytes(32)
    return _KeyState.random_key, True


def active_redaction_key(settings: Settings) -> bytes:
    """The key pseudonyms are made with: the configured one, else the process's random
    one (shared with the traces, so a span and a log line show the same pseudonym)."""
    return _key_for(settings)[0]


def route_library_logging() -> None:
    """Stop ``echo=True`` from adding its own raw stdout handler to SQLAlchemy's loggers.

    SQLAlchemy adds ``StreamHandler(sys.stdout)`` to an echoing engine's logger when
    that logger has no handler of its own, which would print SQL parameters unredacted
    and bypass our root handler. With the hook neutralised, echo records still get
    emitted (echo sets the level) and propagate to the root handler, redacted.
    """
    import sqlalchemy.log

    if hasattr(sqlalchemy.log, "_add_default_handler"):
        sqlalchemy.log._add_default_handler = _no_default_handler


def _no_default_handler(logger: logging.Logger) -> None:
    """Replacement for SQLAlchemy's echo handler: records propagate to the root handler."""


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """Uncaught exceptions go through the redacting handler, not raw to stderr."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log.critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    _log.critical(
        "uncaught_exception_in_thread",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(
    settings: Settings,
    *,
    stream: TextIO | None = None,
    force_format: Renderer | None = None,
    warn_missing_key: bool = True,
    quiet_libraries: bool = False,
) -> None:
    """Configure structlog and the root logger from ``settings``; safe to call again.

    ``stream`` defaults to the current stderr (stdout belongs to CLI output).
    ``force_format`` overrides ``settings.log_format``; ``auto`` picks the console
    renderer on a terminal and JSON lines otherwise. Each call replaces the handler
    an earlier call installed and leaves other handlers (pytest's, say) alone.
    Without ``CONSUMERGEN_LOG_REDACTION_KEY`` a random per-process key is used and one
    warning is logged, once per process (``warn_missing_key=False`` leaves that warning to
    a later call: short CLI verbs should not print it on every run, the daemon should).
    ``quiet_libraries`` (the CLI verbs but ``run``, unless ``--verbose``) drops other
    libraries' records below WARNING (``LibraryQuiet``), except at ``DEBUG``.
    """
    configure_structlog()
    key, generated = _key_for(settings)
    handler = LogHandler(stream)
    tty = bool(getattr(handler.stream, "isatty", lambda: False)())
    renderer: Renderer
    if force_format is not None:
        renderer = force_format
    elif settings.log_format == "auto":
        renderer = "console" if tty else "json"
    else:
        renderer = settings.log_format
    handler.setFormatter(build_formatter(Redactor(key), renderer, colors=tty))
    if quiet_libraries and settings.log_level != "DEBUG":
        handler.addFilter(LibraryQuiet())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    route_library_logging()
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread

    if generated and warn_missing_key and not _KeyState.warned:
        _KeyState.warned = True
        _log.warning(
            "log_redaction_key_missing",
            detail="CONSUMERGEN_LOG_REDACTION_KEY is not set: UUID pseudonyms use a random "
            "per-process key and cannot be matched across restarts or computed by operators",
        )
