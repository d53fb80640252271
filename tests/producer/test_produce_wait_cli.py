"""`consumergen produce --wait` and `consumergen get` against a real daemon (in-process,
SQLite): outcomes printed, exit 0 only when all were applied, the reason named."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.polling import poll

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


async def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    """The CLI in a thread: it runs its own event loop, the daemon runs on this one."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli, list(args), env=env, input=input, catch_exceptions=False
    )


async def test_produce_wait_and_get(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    topics = Topics(
        events=await new_topic(partitions=2, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    replies = await new_topic(partitions=2, prefix="replies")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    consumer = str(uuid.uuid4())
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.read_api is not None
        env = {
            "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CONSUMERGEN_TOPIC": topics.events,
            "CONSUMERGEN_REPLY_TOPIC": replies,
            "CONSUMERGEN_READ_API_URL": f"http://127.0.0.1:{daemon.read_api.port}",
            "CONSUMERGEN_LOG_REDACTION_KEY": "cli-wait-test",
        }
        created = await run(
            env,
            "produce",
            "--wait",
            "--consumer-uuid",
            consumer,
            "--expected-generation",
            "null",
            "--project",
            "p-1",
        )
        assert created.exit_code == 0, created.output
        assert created.stdout.strip().endswith("applied (generation 1)")

        lines = "\n".join(
            [
                json.dumps(
                    {
                        "type": "consumer.upsert",
                        "consumer_uuid": consumer,
                        "expected_generation": 1,
                        "project_id": "p-2",
                    }
                ),
                json.dumps(
                    {"type": "consumer.upsert", "consumer_uuid": consumer, "expected_generation": 1}
                ),
                "{broken",
            ]
        )
        mixed = await run(
            env, "produce", "--wait", "--json", "--timeout", "30", "--file", "-", input=lines
        )
        assert mixed.exit_code == 1
        records = [json.loads(line) for line in mixed.stdout.splitlines()]
        assert [r["line"] for r in records] == [1, 2, 3]
        assert (records[0]["outcome"], records[0]["generation_after"]) == ("applied", 2)
        assert records[0]["state_after"]["project_id"] == "p-2"
        assert (records[1]["outcome"], records[1]["reason"]) == ("rejected", "generation_conflict")
        assert records[2]["ok"] is False and records[2]["reason"] == "not_json"
        assert "rejected: generation_conflict" in mixed.stderr

        shown = await run(env, "get", consumer.upper(), "--json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout) == {
            "consumer_uuid": consumer,
            "state": "live",
            "generation": 2,
            "project_id": "p-2",
            "user_id": "00000000-0000-0000-0000-000000000000",
            "consumer_type": None,
        }
        unknown = await run(env, "get", str(uuid.uuid4()))
        assert unknown.exit_code == 1 and "no consumer" in unknown.stderr
        assert (await run(env, "get", "nope")).exit_code == 2
        assert (
            await run(env, "produce", "--consumer-uuid", consumer, "--timeout", "1")
        ).exit_code == 2  # --timeout without --wait

    # The daemon is stopped: --wait ends in a timeout naming it, exit 1.
    late = await run(env, "produce", "--wait", "--timeout", "1", "--consumer-uuid", consumer)
    assert late.exit_code == 1 and "may still be applied later" in late.stderr
    # Without the setting, --wait uses the default reply topic (TOPIC.replies); this
    # test's events topic has none, so that is one line naming the setting and the topic.
    no_topic = {k: v for k, v in env.items() if k != "CONSUMERGEN_REPLY_TOPIC"}
    refused = await run(no_topic, "produce", "--wait", "--consumer-uuid", consumer)
    assert refused.exit_code == 2 and "CONSUMERGEN_REPLY_TOPIC" in refused.stderr
    assert f"{topics.events}.replies" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
