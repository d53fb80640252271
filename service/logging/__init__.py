"""Structured logging for every entry point, with every UUID pseudonymised.

Call ``configure_logging(settings)`` once at start-up; log with
``structlog.stdlib.get_logger(__name__)``. See ``docs/logging.md``.
"""

from __future__ import annotations

from service.logging.redaction import (
    CLEAR_UUID_RE,
    PSEUDONYM_PREFIX,
    PSEUDONYM_RE,
    Redactor,
    canonical_uuid,
    find_clear_uuid,
    pseudonym,
)
from service.logging.setup import (
    LogHandler,
    RedactingFormatter,
    build_formatter,
    configure_logging,
    configure_structlog,
    redaction_key,
    route_library_logging,
)
from service.logging.trace_ids import TRACE_ID_FIELD_RE

__all__ = [
    "CLEAR_UUID_RE",
    "PSEUDONYM_PREFIX",
    "PSEUDONYM_RE",
    "TRACE_ID_FIELD_RE",
    "LogHandler",
    "RedactingFormatter",
    "Redactor",
    "build_formatter",
    "canonical_uuid",
    "configure_logging",
    "configure_structlog",
    "find_clear_uuid",
    "pseudonym",
    "redaction_key",
    "route_library_logging",
]
