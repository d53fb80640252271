"""`consumergen run` refusing to start, each refusal one line naming what is wrong and
exit 2, before any broker is needed: a read API open to other machines without a token,
a SQLite database that does not exist, and ``--local`` with a broker address it cannot
serve or a port already taken.  (The daemon itself: ``tests/daemon``; the event loop
setting: ``test_event_loop.py``; an unusable Kafka library: ``test_kafka_records.py``.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli

ENV = {
    "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached
    "CONSUMERGEN_LOG_REDACTION_KEY": "unit",  # no warning line about a random key
    "CONSUMERGEN_HEALTH_PORT": "0",
    "CONSUMERGEN_READ_API_PORT": "0",
}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["run", *args], env=ENV | env)


def refusal(result: Result) -> str:
    """The one line the refusal is (the logs are JSON lines on the same stream)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = [text for text in result.stderr.splitlines() if not text.startswith("{")]
    return line


def test_a_read_api_open_to_other_machines_needs_a_token(tmp_path: Path) -> None:
    database = tmp_path / "never-made.db"
    result = run(
        {
            "CONSUMERGEN_READ_API_HOST": "0.0.0.0",
            "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        }
    )
    assert refusal(result) == (
        "consumergen run: CONSUMERGEN_READ_API_HOST: 0.0.0.0 is reachable from other machines "
        "and no CONSUMERGEN_READ_API_TOKEN, CONSUMERGEN_READ_API_TOKENS or "
        "CONSUMERGEN_READ_API_TOKENS_FILE is set; set a token, bind 127.0.0.1, or set "
        "CONSUMERGEN_READ_API_ALLOW_ANONYMOUS=true"
    )
    assert not database.exists()


def test_a_sqlite_database_that_does_not_exist_is_named_not_made(tmp_path: Path) -> None:
    database = tmp_path / "typo.db"
    result = run({}, "--database-url", f"sqlite+aiosqlite:///{database}")
    line = refusal(result)
    assert line.startswith("consumergen run: ") and str(database) in line
    assert not database.exists()


@pytest.mark.parametrize("servers", ["kafka:9092", "127.0.0.1:port", "localhost:", "10.0.0.1:9092"])
def test_local_needs_a_loopback_broker_address(servers: str) -> None:
    result = run({}, "--local", "--bootstrap-server", servers)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "Error: --local starts a broker on 127.0.0.1; CONSUMERGEN_BOOTSTRAP_SERVERS must be "
        f"127.0.0.1:PORT, not {servers}"
    )


def test_local_with_its_broker_port_taken_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            {"CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'local.db'}"},
            "--local",
            "--bootstrap-server",
            f"localhost:{port}",
        )
    assert refusal(result) == (
        f"consumergen run: CONSUMERGEN_BOOTSTRAP_SERVERS: cannot listen on localhost:{port}: "
        "the address is already in use"
    )
