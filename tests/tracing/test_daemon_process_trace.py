"""``consumergen run`` in a real process, configured by the standard OTEL_* variables only,
exports its spans over OTLP/HTTP to a receiver in the test: the event span continues the
trace of a producer in another process, and its reply closes it there."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from service.domain.events import EventType
from service.domain.outcomes import OutcomeKind
from service.logging import find_clear_uuid
from service.producer import EventProducer, new_event
from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess
from service.testing.polling import poll
from tests.support.process_logs import scan_daemon_logs
from tests.tracing.conftest import OtlpReceiver, Traced

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


async def test_the_daemon_process_exports_the_event_span_of_the_producers_trace(
    kafka_bootstrap: str,
    sqlite_url: str,
    new_topic: TopicFactory,
    traced: Traced,
    otlp_receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    topics = Topics(
        events=await new_topic(partitions=1, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    replies = await new_topic(partitions=1, prefix="replies")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    await upgrade(settings)
    env = process_env(kafka_bootstrap, sqlite_url, topics, reply_topic=replies) | {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_SERVICE_NAME": "consumergen-daemon",
    }
    daemon = DaemonProcess(env, tmp_path, name="traced").start()
    try:

        async def ready() -> bool:
            # Off the loop: it serves the receiver meanwhile.
            return bool((await asyncio.to_thread(daemon.readiness) or {}).get("ready"))

        await poll(ready, 60, "the daemon ready")
        async with EventProducer(settings, reply_partition=0) as producer:
            event = new_event(EventType.UPSERT, str(uuid.uuid4()), expected_generation=None)
            outcome = await producer.send_and_wait(event, wait_seconds=60)
        assert outcome.kind is OutcomeKind.APPLIED
    finally:
        await daemon.terminate()  # SIGTERM: the daemon flushes its spans as it stops
        scan_daemon_logs(daemon)
    assert daemon.process is not None and daemon.process.returncode == 0
    [send] = traced.named(f"send {topics.events}")
    spans = otlp_receiver.spans()
    [(apply, resource)] = [(s, r) for s, r in spans if s.name == f"apply {topics.events}"]
    assert resource["service.name"] == "consumergen-daemon"
    assert apply.trace_id == send.context.trace_id.to_bytes(16, "big")
    assert apply.parent_span_id == send.context.span_id.to_bytes(8, "big")
    attributes = {a.key: a.value.string_value for a in apply.attributes}
    assert attributes["consumergen.outcome"] == "applied"
    assert {s.name for s, _ in spans} >= {f"process {topics.events}", "database transaction"}
    [receive] = traced.named(f"receive {replies}")
    assert receive.parent is not None
    assert receive.parent.span_id.to_bytes(8, "big") == apply.span_id
    assert find_clear_uuid(str(otlp_receiver.requests)) is None
