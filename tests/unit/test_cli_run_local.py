"""`consumergen run --local` past its checks, over a stand-in broker (no Java): the
broker it starts (data in .local/kafka, on the port of the address given), the line it
logs, the outcomes topic it turns on unless one is set, the database and topics it
prepares before the daemon, the daemon's exit code as its own, and the broker stopped
afterwards, even when the daemon fails; and the refusals of ``run`` on stderr only.
(The refusals before any broker: ``test_cli_run.py``; a real broker: ``tests/integration``.)"""

from __future__ import annotations

import json
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import service.cli.run as run_module
import service.embedded.kafka as embedded_kafka
import service.kafka.topics as topics
import service.store.migrate as migrate
from service.cli import cli
from service.config import Settings, load_settings

STEPS: list[str] = []


@dataclass
class StandInBroker:
    data_dir: Path
    port: int
    started_in: float = 2.345
    steps: list[str] = field(default_factory=lambda: STEPS)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.steps.append("broker started")

    def stop(self) -> None:
        self.steps.append("broker stopped")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The broker, the migration, the topics and the daemon replaced by recorders."""
    seen: dict[str, Any] = {"brokers": []}
    STEPS.clear()

    def broker(data_dir: Path, *, port: int) -> StandInBroker:
        made = StandInBroker(data_dir, port)
        seen["brokers"].append(made)
        return made

    async def upgrade(settings: Settings) -> None:
        STEPS.append("upgrade")
        seen["upgrade"] = settings

    async def ensure_topics(settings: Settings) -> None:
        STEPS.append("topics")
        seen["topics"] = settings

    async def daemon(settings: Settings) -> int:
        STEPS.append("daemon")
        seen["daemon"] = settings
        if seen.get("fail"):
            raise RuntimeError("the daemon's bug")
        return 7

    monkeypatch.setattr(embedded_kafka, "KafkaBroker", broker)
    monkeypatch.setattr(migrate, "upgrade", upgrade)
    monkeypatch.setattr(topics, "ensure_topics", ensure_topics)
    monkeypatch.setattr(run_module, "_run", daemon)
    return seen


def logged(record: logging.LogRecord) -> dict[str, Any]:
    """A structlog line as the stdlib record carries it: the event dict, or its JSON."""
    found = record.msg if isinstance(record.msg, dict) else json.loads(record.getMessage())
    return dict(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(tmp_path: Path, host: str, port: int, **more: object) -> Settings:
    return load_settings(
        bootstrap_servers=f"{host}:{port}",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'local.db'}",
        **more,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_local_starts_its_broker_prepares_and_runs_the_daemon(
    local: dict[str, Any], tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with caplog.at_level(logging.INFO, logger="service.cli.run"):
        code = run_module._run_local(settings(tmp_path, host, port))
    assert code == 7  # the daemon's exit code
    [broker] = local["brokers"]
    assert broker.data_dir == (Path(".local") / "kafka").resolve()
    assert broker.port == port
    assert STEPS == ["broker started", "upgrade", "topics", "daemon", "broker stopped"]
    for step in ("upgrade", "topics", "daemon"):
        assert local[step].outcomes_topic == "consumer-events.outcomes", step
        assert local[step].bootstrap_servers == f"{host}:{port}", step
    lines = [logged(r) for r in caplog.records if r.name == "service.cli.run"]
    assert [{k: v for k, v in line.items() if k != "timestamp"} for line in lines] == [
        {
            "level": "info",
            "logger": "service.cli.run",
            "event": "local broker started",
            "bootstrap": f"127.0.0.1:{port}",
            "seconds": 2.3,
        }
    ]


def test_local_keeps_an_outcomes_topic_that_is_set(local: dict[str, Any], tmp_path: Path) -> None:
    run_module._run_local(settings(tmp_path, "127.0.0.1", free_port(), outcomes_topic="mine"))
    assert [local[step].outcomes_topic for step in ("upgrade", "topics", "daemon")] == [
        "mine",
        "mine",
        "mine",
    ]


def test_local_stops_its_broker_when_the_daemon_fails(
    local: dict[str, Any], tmp_path: Path
) -> None:
    local["fail"] = True
    with pytest.raises(RuntimeError, match="the daemon's bug"):
        run_module._run_local(settings(tmp_path, "127.0.0.1", free_port()))
    assert STEPS[-1] == "broker stopped"


def test_run_s_refusal_of_its_event_loop_is_on_stderr_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    result = CliRunner().invoke(
        cli,
        ["run"],
        env={"CONSUMERGEN_EVENT_LOOP": "uvloop", "CONSUMERGEN_LOG_REDACTION_KEY": "test"},
    )
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = [text for text in result.stderr.splitlines() if not text.startswith("{")]
    assert line.startswith("consumergen run: CONSUMERGEN_EVENT_LOOP=uvloop needs uvloop")
