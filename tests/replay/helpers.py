"""Helpers for the operator tools' tests: run the CLI in-process, run the daemon to the end.

The CLI runs through click's CliRunner in a worker thread (its ``asyncio.run`` needs a
thread without a running loop), so its log lines pass the suite's UUID leak guard.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result

from service.cli import cli
from service.config import Settings
from service.store.migrate import upgrade
from service.testing.daemon import Topics, running_daemon
from service.testing.kafka_io import produce_docs, produce_raw, wait_all_committed


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives the CLI the same settings as ``settings``."""
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CONSUMERGEN_DATABASE_URL": settings.database_url,
        "CONSUMERGEN_TOPIC": settings.topic,
        "CONSUMERGEN_DLQ_TOPIC": settings.dlq_topic,
        "CONSUMERGEN_MAX_EVENT_BYTES": str(settings.max_event_bytes),
        "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "15",
        "CONSUMERGEN_BATCH_MAX_EVENTS": "100",
    }
    return env


@dataclass
class Cli:
    env: dict[str, str]

    async def __call__(self, *args: str) -> Result:
        runner = CliRunner()
        return await asyncio.to_thread(
            runner.invoke, cli, list(args), env=self.env, catch_exceptions=False
        )

    async def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = await self(*args, "--json")
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc


async def run_daemon_over(
    settings: Settings,
    bootstrap: str,
    topics: Topics,
    docs: list[dict[str, Any]],
    padding: dict[str, int] | None = None,
) -> None:
    """Produce ``docs`` (the values of event ids in ``padding`` followed by that many
    spaces: still the same JSON, but bigger), let a daemon apply them all, stop it."""
    await upgrade(settings)
    if padding:
        await produce_raw(
            bootstrap,
            topics.events,
            [
                (
                    d["consumer_uuid"].encode(),
                    json.dumps(d).encode() + b" " * padding.get(d["event_id"], 0),
                )
                for d in docs
            ],
        )
    else:
        await produce_docs(bootstrap, topics.events, docs)
    async with running_daemon(settings):
        await wait_all_committed(bootstrap, topics.group, topics.events, within=90)
