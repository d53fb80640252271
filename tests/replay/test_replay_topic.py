"""Replaying the events topic: after the daemon it changes nothing; next to it, it is safe."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from service.replay import Mode, RangeSpec, TopicSource, replay
from service.store.engine import create_engine
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, wait_all_committed
from service.testing.model import Model
from service.testing.workload import expected_state, mixed_stream
from tests.replay.helpers import Cli, run_daemon_over, settings_env

pytestmark = [pytest.mark.kafka]


def _second_pass(stream: list[dict]) -> Counter[str]:
    """What the independent model says a second delivery of the whole stream gives."""
    model = expected_state(stream)
    return Counter(model.apply(doc) for doc in stream)


async def test_replaying_the_whole_topic_after_the_daemon_changes_nothing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    stream = mixed_stream(consumers=30, events=400, seed=11)
    settings = daemon_settings(kafka_bootstrap, database_url, topics, batch_max_events=50)
    await run_daemon_over(settings, kafka_bootstrap, topics, stream)
    state, rows = await consumer_state(database_url), await inbox(database_url)
    assert state == expected_state(stream).state()
    expected = _second_pass(stream)
    assert expected["duplicate"] > 300 and set(expected) <= {
        "duplicate",
        "rejected:event_id_reused",
    }

    cli = Cli(settings_env(settings))
    for dry in (True, False):
        args = ["replay", "--from-beginning", *(["--dry-run"] if dry else [])]
        doc = await cli.json(*args)
        assert doc["dry_run"] is dry
        assert doc["read"] == len(stream)
        assert doc["outcomes"] == {
            "applied": 0,
            "duplicate": expected["duplicate"],
            "rejected": expected["rejected:event_id_reused"],
            "failed": 0,
        }
        assert doc["invalid"] == 0 and doc["problems"] == 0
        if dry:
            assert doc["consumers"], "per-consumer generations are reported"
            assert all(
                c["generation_before"] == c["generation_after"] for c in doc["consumers"].values()
            )
            assert {u: c["generation_before"] for u, c in doc["consumers"].items()} == {
                u: s[0] for u, s in state.items()
            }
        assert await consumer_state(database_url) == state
        assert await inbox(database_url) == rows

    text = await cli("replay", "--from-beginning", "--dry-run")
    assert text.exit_code == 0, text.stderr
    assert "events read" in text.stdout and "duplicate" in text.stdout
    assert "nothing was written" in text.stdout


async def test_dry_run_carries_state_between_batches(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics
) -> None:
    """A create in one batch makes a conditional update in a later batch applicable."""
    from service.testing.model import event_doc

    consumer = "00000000-0000-4000-8000-00000000abcd"
    docs = [event_doc(consumer, expected=None, project="p", user="u")]
    docs += [event_doc(consumer, expected=g) for g in range(1, 6)]
    docs.append(event_doc(consumer, delete=True, expected=6))
    await produce_docs(kafka_bootstrap, topics.events, docs)
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics)
    from service.store.migrate import upgrade

    await upgrade(settings)
    cli = Cli(settings_env(settings))
    doc = await cli.json("replay", "--from-beginning", "--dry-run", "--batch-size", "2")
    assert doc["outcomes"]["applied"] == 7
    assert doc["consumers"] == {
        consumer: {
            "generation_before": None,
            "generation_after": 7,
            "deleted_before": False,
            "deleted_after": True,
        }
    }
    assert await consumer_state(sqlite_url) == {}
    assert await inbox(sqlite_url) == {}


async def test_replay_concurrent_with_the_daemon_ends_in_the_model_state(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    stream = mixed_stream(consumers=25, events=600, seed=23)
    model = expected_state(stream)
    settings = daemon_settings(kafka_bootstrap, database_url, topics, batch_max_events=40)
    await produce_docs(kafka_bootstrap, topics.events, stream[:300])
    engine = create_engine(settings)
    try:
        async with running_daemon(settings):

            async def one_replay() -> None:
                spec = RangeSpec(from_beginning=True)
                async with TopicSource(settings, settings.topic, spec, 25) as source:
                    report = await replay(source, settings=settings, mode=Mode.APPLY, engine=engine)
                assert report.problems == 0
                assert report.read == source.total

            replays = asyncio.gather(one_replay(), one_replay())
            await produce_docs(kafka_bootstrap, topics.events, stream[300:])  # meanwhile
            await replays
            await one_replay()  # the whole topic once more, while the daemon catches up
            await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=90)
    finally:
        await engine.dispose()
    assert await consumer_state(database_url) == model.state()
    recorded = await inbox(database_url)
    assert recorded == {
        event_id: (outcome.split(":")[0], outcome.split(":")[1] if ":" in outcome else None)
        for event_id, outcome in model.outcomes.items()
    }
    assert isinstance(model, Model)
