"""The daemon's listeners: bound after the configuration, durability and schema checks
and before the broker; a port that cannot be had is one line naming the setting and the
address, exit 2, no traceback (DESIGN.md, Configuration).  Real processes, real sockets;
no broker is needed, since every case ends before the daemon reaches one."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import load_settings
from service.daemon.app import Daemon
from service.store.engine import create_engine
from service.testing.polling import poll


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    env.update(
        CONSUMERGEN_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        CONSUMERGEN_BOOTSTRAP_SERVERS="127.0.0.1:9",  # never reached
        CONSUMERGEN_HEALTH_PORT="0",
        CONSUMERGEN_READ_API_PORT="0",
        CONSUMERGEN_LOG_FORMAT="json",
        CONSUMERGEN_LOG_REDACTION_KEY="listener-tests",
    )
    env.update({f"CONSUMERGEN_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and '"critical"' not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("consumergen run:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    done = _run(tmp_path, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    return tmp_path


@pytest.mark.parametrize("setting", ["health_port", "read_api_port"])
def test_a_taken_port_is_one_line_naming_the_setting_and_the_address(
    migrated: Path, held_port: int, setting: str
) -> None:
    done = _run(migrated, "run", **{setting: str(held_port)})
    line = _one_error_line(done)
    assert f"CONSUMERGEN_{setting.upper()}" in line, line
    assert f"127.0.0.1:{held_port}" in line and "already in use" in line, line


def test_an_address_this_machine_lacks_names_the_host_setting(migrated: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    done = _run(migrated, "run", read_api_host="192.0.2.1", read_api_token="t")
    line = _one_error_line(done)
    assert "CONSUMERGEN_READ_API_HOST" in line and "192.0.2.1:" in line, line


def test_the_schema_check_comes_before_the_listeners(tmp_path: Path, held_port: int) -> None:
    """An unmigrated database and a taken port: the schema is what is named (the checks
    run first), and no listener was opened (no "health endpoints up")."""
    (tmp_path / "db.sqlite3").touch()
    done = _run(tmp_path, "run", read_api_port=str(held_port))
    line = _one_error_line(done)
    assert "consumergen db upgrade" in line and "READ_API_PORT" not in line, line
    assert "health endpoints up" not in done.stderr


@pytest.mark.parametrize("token", [None, "", " , "])
def test_a_public_read_api_without_a_token_is_refused_at_start(
    migrated: Path, token: str | None
) -> None:
    """An empty token is no token: it must not open the read API to every machine."""
    empty = {} if token is None else {"read_api_token": token, "read_api_tokens": token}
    done = _run(migrated, "run", read_api_host="0.0.0.0", **empty)
    line = _one_error_line(done)
    assert line.startswith("consumergen run: CONSUMERGEN_READ_API_HOST: 0.0.0.0 "), line
    assert "CONSUMERGEN_READ_API_ALLOW_ANONYMOUS" in line, line
    assert "daemon starting" not in done.stderr  # refused before anything started


@pytest.mark.parametrize("setting", ["health_port", "bootstrap_servers"])
def test_run_local_refuses_a_taken_port_before_it_starts_a_broker(
    tmp_path: Path, held_port: int, setting: str
) -> None:
    value = f"127.0.0.1:{held_port}" if setting == "bootstrap_servers" else str(held_port)
    done = _run(tmp_path, "run", "--local", **{setting: value})
    line = _one_error_line(done)
    named = f"CONSUMERGEN_{setting.upper()}"
    assert f"{named}: cannot listen on 127.0.0.1:{held_port}: the address is" in line, line
    assert not (tmp_path / ".local").exists()  # no broker was started


def _get(url: str) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


async def test_a_database_down_at_start_is_waited_for_with_the_probes_up() -> None:
    """Only a refusal stops the daemon before its listeners: a database that cannot
    answer now (connection refused) is reported on /readyz while the daemon waits."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    settings = load_settings(
        database_url=f"postgresql+asyncpg://nobody@127.0.0.1:{closed}/none",
        bootstrap_servers="127.0.0.1:9",
        health_port=0,
        read_api_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.2,
    )
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    task = asyncio.create_task(daemon.run(health=True))
    try:
        await poll(lambda: daemon.health is not None or task.done(), 30, "the listeners")
        assert daemon.health is not None and daemon.read_api is not None, task
        url = f"http://127.0.0.1:{daemon.health.port}/readyz"
        answer = await asyncio.to_thread(_get, url)
        assert answer is not None
        status, body = answer
        assert status == 503 and body["database_ok"] is False
        assert str(body["last_error"]).startswith("database:")
        assert not task.done()
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        await engine.dispose()
