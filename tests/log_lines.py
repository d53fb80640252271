"""The service's structured log events as a test reads them back from ``caplog``.

The service logs one JSON object a line through the standard library (structlog's
stdlib integration); pytest's capture may hold other lines beside them (a library's
plain text), which are not events and are skipped."""

from __future__ import annotations

from typing import Any

import orjson
import pytest


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Every JSON log event captured so far, in order."""
    found = []
    for line in caplog.text.splitlines():
        try:
            found.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return found


def named(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The captured JSON log events called ``event``, in order."""
    return [
        entry for entry in logged(caplog) if isinstance(entry, dict) and entry.get("event") == event
    ]
