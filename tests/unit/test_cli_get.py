"""`consumergen get UUID` against the daemon's real read API server over a SQLite file
(no broker): the state as the operator reads it (text and ``--json``), an unknown
consumer, a refusal, a server that cannot answer, and bad arguments, with their exit
codes (``tests/producer/test_produce_wait_cli.py`` runs it beside a real daemon)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.domain.events import EventType
from service.embedded.process import free_port
from tests.apply.helpers import event, migrated
from tests.producer.test_read_client import serving

TOKEN = "get-token"
LIVE = "00000000-0000-4000-8000-0000000000a1"
DEAD = "00000000-0000-4000-8000-0000000000d1"


def errors(result: Result) -> list[str]:
    """The CLI's own lines on stderr (the in-process server logs there too)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


def get(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["get", *args], env=env)


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"

    async def fill() -> None:
        async with migrated(url) as db:
            await db.applier.apply(
                event(LIVE, EventType.UPSERT, None, project_id="p", user_id="u", consumer_type="VM")
            )
            await db.applier.apply(event(DEAD, EventType.UPSERT, None, project_id="q", user_id="v"))
            await db.applier.apply(event(DEAD, EventType.DELETE, 1))

    asyncio.run(fill())
    return url


def test_a_consumer_s_state_field_by_field_and_in_json(database: str) -> None:
    with serving(database, TOKEN) as base:
        env = {"CONSUMERGEN_READ_API_URL": base, "CONSUMERGEN_READ_API_TOKEN": TOKEN}
        text = get(env, f" {LIVE.upper()} ")
        as_json = get(env, DEAD, "--json")
        tombstone = get(env, DEAD)
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [
        f"consumer_uuid: {LIVE}",
        "state: live",
        "generation: 1",
        "project_id: p",
        "user_id: u",
        "consumer_type: VM",
    ]
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "consumer_uuid": DEAD,
        "state": "deleted",
        "generation": 2,
        "project_id": "q",
        "user_id": "v",
        "consumer_type": None,
    }
    assert len(as_json.stdout.splitlines()) == 1
    assert tombstone.stdout.splitlines()[-1] == "consumer_type: "  # none: empty, not "None"


def test_the_url_option_overrides_the_setting(database: str) -> None:
    with serving(database) as base:
        result = get({"CONSUMERGEN_READ_API_URL": "http://127.0.0.1:1"}, LIVE, "--url", base)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"consumer_uuid: {LIVE}"


def test_an_unknown_consumer_is_exit_1_naming_it(database: str) -> None:
    never = str(uuid.uuid4())
    with serving(database) as base:
        result = get({"CONSUMERGEN_READ_API_URL": base}, never)
    assert (result.exit_code, result.stdout) == (1, "")
    assert errors(result) == [f"error: no consumer {never}"]


def test_a_refusal_and_a_server_away_are_one_line_and_exit_1(database: str) -> None:
    with serving(database, TOKEN) as base:
        refused = get({"CONSUMERGEN_READ_API_URL": base, "CONSUMERGEN_READ_API_TOKEN": "no"}, LIVE)
    nowhere = f"http://127.0.0.1:{free_port()}"
    away = get({"CONSUMERGEN_READ_API_URL": nowhere}, LIVE)
    assert (refused.exit_code, refused.stdout) == (1, "")
    [line] = errors(refused)
    assert line.startswith("error: ") and "(401: a bearer token is required)" in line
    assert (away.exit_code, away.stdout) == (1, "")
    [line] = errors(away)
    assert line.startswith(f"error: the read API at {nowhere} did not answer (")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["nope"], {}, "not a UUID: 'nope'"),
        (["12345678-1234"], {}, "not a UUID: '12345678-1234'"),
        ([LIVE, "--url", "ftp://reads"], {}, "CONSUMERGEN_READ_API_URL: not an http(s) URL"),
    ],
)
def test_bad_arguments_are_a_usage_error(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = get(env, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr.splitlines()[-1]
    assert result.stdout == ""
