"""Request-reply against a real daemon, broker and database (SQLite and PostgreSQL): a
producer waits for each outcome kind, the state after rides along, an outcome that came
before the wait is kept, a stopped daemon is a clear timeout; the read API answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from service.domain.events import EventType
from service.domain.outcomes import OutcomeKind, Reason
from service.producer import (
    Change,
    ConsumerReader,
    EventProducer,
    OutcomeTimeout,
    ReadRefused,
    RetryPolicy,
    new_event,
)
from service.producer.update import update
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.kafka_io import read_all
from service.testing.polling import poll

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


async def _topics(new_topic: TopicFactory) -> tuple[Topics, str]:
    topics = Topics(
        events=await new_topic(partitions=2, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    return topics, await new_topic(partitions=3, prefix="replies")


async def test_wait_for_every_outcome_kind(
    kafka_bootstrap: str, database_url: str, new_topic: TopicFactory
) -> None:
    topics, replies = await _topics(new_topic)
    settings = daemon_settings(kafka_bootstrap, database_url, topics, reply_topic=replies)
    consumer, ghost = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.health is not None
        assert daemon.read_api is not None
        local = settings.model_copy(update={"read_api_port": daemon.read_api.port})
        async with EventProducer(local, reply_partition=1) as producer:
            create = new_event(
                EventType.UPSERT, consumer, expected_generation=None, project_id="p-1", user_id="u"
            )
            applied = await producer.send_and_wait(create, wait_seconds=30)
            assert (applied.kind, applied.reason, applied.generation_after) == (
                OutcomeKind.APPLIED,
                None,
                1,
            )
            assert applied.ok and applied.event_id == create.event_id
            assert applied.state_after is not None
            assert (applied.state_after.generation, applied.state_after.project_id) == (1, "p-1")
            assert not applied.state_after.deleted

            duplicate = await producer.send_and_wait(create)
            assert duplicate.kind is OutcomeKind.DUPLICATE and duplicate.ok
            assert duplicate.original is OutcomeKind.APPLIED and duplicate.generation_after == 1

            # The outcome arrives before anyone waits: it is kept.
            early = await producer.request(
                new_event(EventType.UPSERT, consumer, expected_generation=None)
            )
            await poll(early.future.done, 30, "the reply arrived before the wait")
            exists = await early.outcome(wait_seconds=0.01)
            assert (exists.kind, exists.reason) == (OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS)
            assert not exists.ok and exists.summary == "rejected: consumer_exists"
            assert exists.state_after is not None and exists.state_after.generation == 1

            conflict = await producer.send_and_wait(
                new_event(EventType.UPSERT, consumer, expected_generation=7, project_id="p-2")
            )
            assert (conflict.reason, conflict.generation_after) == (Reason.GENERATION_CONFLICT, 1)
            assert conflict.state_after is not None and conflict.state_after.project_id == "p-1"

            missing = await producer.send_and_wait(
                new_event(EventType.DELETE, ghost, expected_generation=0)
            )
            assert (missing.reason, missing.state_after) == (Reason.CONSUMER_NOT_FOUND, None)

            reused = replace(create, project_id="p-other")
            again = await producer.send_and_wait(reused)
            assert (again.kind, again.reason) == (OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED)

            # Invalid records sent raw get their reply too (their headers are readable).
            not_json = await producer.request_raw(b"{not json", key=consumer.encode())
            bad = await not_json.outcome(wait_seconds=30)
            assert (bad.kind, bad.reason, bad.event_id) == (
                OutcomeKind.INVALID,
                Reason.NOT_JSON,
                None,
            )
            mismatch_doc = create.to_document() | {"event_id": str(uuid.uuid4())}
            mismatch = await producer.request_raw(json.dumps(mismatch_doc).encode(), key=b"x")
            assert (await mismatch.outcome(wait_seconds=30)).reason is Reason.KEY_MISMATCH

            # The read API, through the producer's client.
            async with ConsumerReader(local) as reader:
                state = await reader.get(consumer.upper())
                assert state is not None and (state.generation, state.live) == (1, True)
                assert await reader.get(ghost) is None
                with pytest.raises(ReadRefused, match="400"):
                    await reader.get("not-a-uuid")

            # Read-modify-write: a stale read is retried from the outcome's state.
            moved = await producer.update(
                consumer, lambda s: Change(project_id="p-3"), policy=RetryPolicy(attempts=3)
            )
            assert moved.outcome.kind is OutcomeKind.APPLIED and moved.attempts == 1
            assert moved.outcome.generation_after == 2
            gone = await producer.update(consumer, lambda s: Change(delete=True))
            assert gone.outcome.state_after is not None and gone.outcome.state_after.deleted

            listener = await producer.replies()
            counts = listener.counts
            # Only its own partition: exactly the replies to what it asked, nothing else.
            assert counts.records_read == counts.matched == 10 and counts.foreign == 0
    observed = await read_all(kafka_bootstrap, topics.outcomes)
    assert len(observed) == 10  # the outcomes topic still gets every outcome

    # The daemon is stopped: the wait ends in a clear error, the event stays sent.
    async with EventProducer(settings, reply_partition=0) as producer:
        with pytest.raises(OutcomeTimeout, match="may still be applied later"):
            await producer.send_and_wait(
                new_event(EventType.UPSERT, consumer, expected_generation=None), wait_seconds=1
            )


async def test_read_modify_write_absorbs_a_race(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    """A writer whose read goes stale between its read and its write retries from the
    state its rejection reports, and with retries off it reports the conflict."""
    topics, replies = await _topics(new_topic)
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    consumer = str(uuid.uuid4())
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.health is not None
        assert daemon.read_api is not None
        local = settings.model_copy(update={"read_api_port": daemon.read_api.port})
        async with EventProducer(local) as producer:
            await producer.send_and_wait(
                new_event(EventType.UPSERT, consumer, expected_generation=None)
            )
            seen: list[int | None] = []

            def sneaky(state: Any) -> Change:
                """Another writer moves the consumer right after our read, once."""
                seen.append(None if state is None else state.generation)
                return Change(project_id=f"mine-{len(seen)}")

            async def interfere() -> None:
                await producer.send_and_wait(
                    new_event(EventType.UPSERT, consumer, expected_generation=1)
                )

            await interfere()  # the consumer is at 2; we hold a reader's view of 1 below
            stale_read = producer.update

            class Stale:
                calls = 0

            async def read_once_stale(uuid_: str) -> Any:
                Stale.calls += 1
                async with ConsumerReader(local) as reader:
                    state = await reader.get(uuid_)
                assert state is not None
                return replace(state, generation=1) if Stale.calls == 1 else state

            result = await update(producer, read_once_stale, consumer, sneaky, RetryPolicy())
            assert result.outcome.kind is OutcomeKind.APPLIED and result.attempts == 2
            assert seen == [1, 2]  # the retry decided from the rejection's state_after
            assert result.outcome.generation_after == 3
            Stale.calls = 0
            no_retry = await update(
                producer, read_once_stale, consumer, sneaky, RetryPolicy.no_retries()
            )
            assert no_retry.exhausted and no_retry.outcome.reason is Reason.GENERATION_CONFLICT
            assert stale_read is not None


async def test_a_request_for_a_topic_not_allowed_gets_its_outcome_but_no_reply(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    """The daemon replies only to the topics it allows: a request naming another topic
    (one that exists, so a wrong write would be seen) gets its outcome record on the
    outcomes topic, no reply anywhere, and one count in consumergen_replies_refused_total,
    which is there at 0 from the start."""
    from aiokafka import AIOKafkaProducer

    from service.contract.replies import request_headers
    from service.testing.kafka_io import wait_all_committed
    from service.testing.model import event_doc

    topics, replies = await _topics(new_topic)
    other = await new_topic(partitions=1, prefix="other")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    refused = "consumergen_replies_refused_total"
    allowed_doc = event_doc(str(uuid.uuid4()), project="p", user="u")
    foreign_doc = event_doc(str(uuid.uuid4()), project="p", user="u")
    async with running_daemon(settings) as daemon:
        registry = daemon.metrics.registry
        assert registry.get_sample_value(refused) == 0
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for doc, topic in ((foreign_doc, other), (allowed_doc, replies)):
                await producer.send_and_wait(
                    topics.events,
                    json.dumps(doc).encode(),
                    key=doc["consumer_uuid"].encode(),
                    headers=request_headers(topic, 0, doc["event_id"].encode()),
                )
        finally:
            await producer.stop()
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events)
        assert registry.get_sample_value(refused) == 1
    outcomes = await read_all(kafka_bootstrap, topics.outcomes)
    assert sorted(json.loads(r.value)["event_id"] for r in outcomes) == sorted(
        [allowed_doc["event_id"], foreign_doc["event_id"]]
    )
    assert await read_all(kafka_bootstrap, other) == []
    answered = await read_all(kafka_bootstrap, replies)
    assert [json.loads(r.value)["event_id"] for r in answered] == [allowed_doc["event_id"]]
