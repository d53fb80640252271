"""What the CLI tests of replay, verify, show and archive share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: a SQLite file of the test's own, the topics' names, and a
    broker address nothing connects to (the topic is faked, ``fake_topic``, or unused)."""
    return {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached: faked or unused
        "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'live.db'}",
        "CONSUMERGEN_TOPIC": "events",
        "CONSUMERGEN_DLQ_TOPIC": "events.dlq",
        "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "5",
    }
