"""``ensure_topics`` and the topic limit reads (service.kafka.topics) over aiokafka's admin
client faked at the calls the service makes (``list_topics``, ``create_topics``,
``describe_topics``, ``describe_configs``), answering in the response shapes of aiokafka
0.14; the real broker's case is tests/integration/test_topics_create.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResourceType
from aiokafka.errors import KafkaConnectionError

from service.config import Settings, load_settings
from service.kafka import topics
from service.kafka.clients import BrokerUnavailable
from service.kafka.topics import (
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    DEAD_LETTER_HEADROOM_BYTES,
    ensure_topics,
    max_message_bytes_of,
    topic_max_message_bytes,
)
from tests.log_lines import logged

LEADER = {"error_code": 0, "partition": 0, "leader": 1}


@dataclass
class Broker:
    """What the fake admin clients see: topics with their ``max.message.bytes`` (None:
    the broker does not say), and how the broker answers."""

    limits: dict[str, int | None] = field(default_factory=dict)
    #: CreateTopics: the (code, message) of a topic, else 0; ``v0`` answers without message.
    create_codes: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    v0: bool = False
    #: Describes that still find a created topic without a leader.
    not_ready: int = 1
    #: A call that never answers, or raises this.
    hang: str | None = None
    fail_start: bool = False
    fail: BaseException | None = None
    created: list[NewTopic] = field(default_factory=list)
    described: list[list[str]] = field(default_factory=list)
    configs_asked: list[tuple[Any, str, dict[str, Any]]] = field(default_factory=list)
    admins: list[Admin] = field(default_factory=list)


class Admin:
    def __init__(self, broker: Broker, **options: Any) -> None:
        self.broker = broker
        self.options = options
        self.closed = False
        broker.admins.append(self)

    async def start(self) -> None:
        if self.broker.fail_start:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")

    async def close(self) -> None:
        self.closed = True

    async def _call(self, name: str) -> None:
        if self.broker.hang == name:
            await asyncio.Event().wait()
        if self.broker.fail is not None:
            raise self.broker.fail

    async def list_topics(self) -> list[str]:
        await self._call("list_topics")
        return list(self.broker.limits)

    async def create_topics(self, new: list[NewTopic]) -> Any:
        await self._call("create_topics")
        self.broker.created.extend(new)
        rows = []
        for topic in new:
            code, message = self.broker.create_codes.get(topic.name, (0, None))
            rows.append((topic.name, code) if self.broker.v0 else (topic.name, code, message))
            if code == 0:
                self.broker.limits[topic.name] = None
        return SimpleNamespace(topic_errors=rows)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        await self._call("describe_topics")
        self.broker.described.append(list(names))
        ready = self.broker.not_ready <= 0
        self.broker.not_ready -= 1
        return [
            {"error_code": 0, "topic": name, "partitions": [LEADER if ready else {}]}
            for name in names
        ]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        await self._call("describe_configs")
        [resource] = resources
        self.broker.configs_asked.append((resource.resource_type, resource.name, resource.configs))
        have = self.broker.limits.get(resource.name)
        entries = [("cleanup.policy", "delete")]
        if have is not None:
            entries.append(("max.message.bytes", str(have)))
        return [SimpleNamespace(resources=[(0, None, 2, resource.name, entries)])]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    found = Broker()
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", lambda **o: Admin(found, **o))
    return found


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": "kafka:9092",
        "topic": "ev",
        "dlq_topic": "ev.dlq",
        "reply_topic": "ev.replies",
        "topic_partitions": 3,
        "topic_replication_factor": 1,
        "request_timeout_seconds": 0.3,
    }
    values.update(overrides)
    return load_settings(**values)


def made(broker: Broker) -> dict[str, tuple[int, int, dict[str, str]]]:
    return {
        t.name: (t.num_partitions, t.replication_factor, t.topic_configs) for t in broker.created
    }


async def test_on_an_empty_cluster_every_topic_is_created_and_waited_for(broker: Broker) -> None:
    s = settings(outcomes_topic="ev.outcomes", max_event_bytes=2_000_000)
    assert await ensure_topics(s) == {
        "ev": "created",
        "ev.dlq": "created",
        "ev.outcomes": "created",
        "ev.replies": "created",
    }
    dlq_limit = 2_000_000 + 65_536 + DEAD_LETTER_HEADROOM_BYTES
    assert made(broker) == {
        "ev": (3, 1, {}),
        "ev.dlq": (3, 1, {"max.message.bytes": str(dlq_limit)}),
        "ev.outcomes": (3, 1, {}),
        "ev.replies": (3, 1, {}),
    }
    # Asked again until every partition had a leader; only about the topics created.
    assert broker.described == [["ev", "ev.dlq", "ev.outcomes", "ev.replies"]] * 2
    [admin] = broker.admins
    assert admin.closed
    assert admin.options["bootstrap_servers"] == ["kafka:9092"]


async def test_the_callers_partitions_and_replicas_win(broker: Broker) -> None:
    await ensure_topics(settings(), partitions=5, replication_factor=2)
    assert {(n, r) for n, r, _ in made(broker).values()} == {(5, 2)}


async def test_a_topic_named_twice_is_created_once(broker: Broker) -> None:
    result = await ensure_topics(settings(outcomes_topic="ev.replies"))
    assert [t.name for t in broker.created] == ["ev", "ev.dlq", "ev.replies"]
    assert result == {"ev": "created", "ev.dlq": "created", "ev.replies": "created"}


async def test_the_dead_letter_limit_of_small_events_is_the_brokers_default_plus_room(
    broker: Broker,
) -> None:
    await ensure_topics(settings(max_event_bytes=1024))
    limit = BROKER_DEFAULT_MAX_MESSAGE_BYTES + DEAD_LETTER_HEADROOM_BYTES
    assert made(broker)["ev.dlq"][2] == {"max.message.bytes": str(limit)}


async def test_an_existing_events_topic_sets_the_dead_letter_limit_and_is_left_alone(
    broker: Broker,
) -> None:
    broker.limits["ev"] = 5_000_000
    assert await ensure_topics(settings()) == {
        "ev": "exists",
        "ev.dlq": "created",
        "ev.replies": "created",
    }
    assert "ev" not in made(broker)
    assert made(broker)["ev.dlq"][2] == {"max.message.bytes": str(5_000_000 + 16_384)}
    assert broker.configs_asked[0] == (
        ConfigResourceType.TOPIC,
        "ev",
        {"max.message.bytes": None},
    )
    assert broker.described == [["ev.dlq", "ev.replies"]] * 2


async def test_an_events_topic_whose_limit_is_unknown_uses_the_settings(broker: Broker) -> None:
    broker.limits["ev"] = None
    await ensure_topics(settings(max_event_bytes=2_000_000))
    assert made(broker)["ev.dlq"][2] == {"max.message.bytes": str(2_081_920)}


async def test_everything_existing_creates_nothing(broker: Broker) -> None:
    broker.limits.update({"ev": None, "ev.dlq": None, "ev.replies": None, "other": 1})
    assert await ensure_topics(settings()) == {
        "ev": "exists",
        "ev.dlq": "exists",
        "ev.replies": "exists",
    }
    assert broker.created == [] and broker.described == []


DLQ_WARNING = (
    "the dead-letter topic allows smaller records than the events topic: dead letters of "
    "big records will be cut; raise its max.message.bytes"
)


@pytest.mark.parametrize(("have", "warned"), [(1_130_495, True), (1_130_496, False), (None, False)])
async def test_an_existing_dead_letter_topic_too_small_is_logged_not_altered(
    broker: Broker, caplog: pytest.LogCaptureFixture, have: int | None, warned: bool
) -> None:
    broker.limits.update({"ev.dlq": have})
    assert (await ensure_topics(settings()))["ev.dlq"] == "exists"
    assert "ev.dlq" not in made(broker)
    warnings = [e for e in logged(caplog) if e["event"] == DLQ_WARNING]
    if warned:
        [entry] = warnings
        assert entry["topic"] == "ev.dlq"
        assert entry["max_message_bytes"] == have
        assert entry["wanted"] == 1_130_496
        assert entry["level"] == "warning"
    else:
        assert warnings == []


async def test_a_topic_created_meanwhile_by_someone_else_exists(broker: Broker) -> None:
    broker.create_codes["ev.dlq"] = (36, "Topic 'ev.dlq' already exists.")
    result = await ensure_topics(settings())
    assert result == {"ev": "created", "ev.dlq": "exists", "ev.replies": "created"}


@pytest.mark.parametrize(
    ("v0", "message", "said"),
    [
        (False, "Replication factor: 3 larger than available brokers: 1.", "Replication factor"),
        (False, "", "error"),
        (True, None, "error"),
    ],
)
async def test_a_topic_the_broker_refuses_to_create_is_named_with_its_code(
    broker: Broker, v0: bool, message: str | None, said: str
) -> None:
    broker.v0 = v0
    broker.create_codes["ev.replies"] = (38, message)
    with pytest.raises(BrokerUnavailable) as caught:
        await ensure_topics(settings())
    expected = message if message else "error"
    assert str(caught.value) == f"cannot create topic ev.replies: {expected} (38)"
    assert said in str(caught.value)
    assert broker.admins[0].closed


async def test_topics_that_never_get_a_leader_are_an_outage(broker: Broker) -> None:
    broker.not_ready = 10_000
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BrokerUnavailable, match=r"^topics ev, ev.dlq, ev.replies not ready"):
        await ensure_topics(settings())
    assert 0.3 <= loop.time() - began < 5
    assert broker.admins[0].closed


@pytest.mark.parametrize("call", ["list_topics", "create_topics", "describe_topics"])
async def test_a_broker_that_does_not_answer_is_named_with_the_bound(
    broker: Broker, call: str
) -> None:
    broker.hang = call
    with pytest.raises(BrokerUnavailable) as caught:
        await ensure_topics(settings(request_timeout_seconds=0.25))
    assert str(caught.value) == "Kafka at kafka:9092 did not answer within 0.25 s"
    assert caught.value.__suppress_context__
    assert broker.admins[0].closed


async def test_a_kafka_error_is_an_outage_in_one_line(broker: Broker) -> None:
    broker.fail = KafkaConnectionError("Connection\n reset")
    with pytest.raises(BrokerUnavailable) as caught:
        await ensure_topics(settings())
    assert str(caught.value) == "Kafka error: KafkaConnectionError: Connection reset"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_the_limit_read_of_one_topic(broker: Broker) -> None:
    broker.limits.update({"dlq": 2_000_000, "bare": None})
    admin = Admin(broker)
    assert await topic_max_message_bytes(admin, "dlq", settings()) == 2_000_000
    assert await topic_max_message_bytes(admin, "bare", settings()) is None


def _response(*resources: tuple[int, str, list[tuple[str, str | None]]]) -> Any:
    return SimpleNamespace(resources=[(code, None, 2, name, e) for code, name, e in resources])


def test_the_limit_is_read_from_the_named_topics_answer_only() -> None:
    responses = [
        _response((0, "other", [("max.message.bytes", "1")])),
        SimpleNamespace(),  # a response without resources
        _response(
            (37, "dlq", [("max.message.bytes", "2")]),  # an error: not an answer
        ),
        _response(
            (0, "dlq", [("retention.ms", "5"), ("max.message.bytes", None)]),
        ),
        _response((0, "dlq", [("max.message.bytes", "3000000", False, 5)])),
    ]
    assert max_message_bytes_of(responses, "dlq") == 3_000_000
    assert max_message_bytes_of(responses[:4], "dlq") is None
    assert max_message_bytes_of(responses, "absent") is None


@pytest.mark.parametrize(
    "topic",
    [
        {"error_code": 3, "partitions": [LEADER]},
        {"error_code": 0, "partitions": []},
        {"error_code": 0},
        {"partitions": [LEADER]},
        {"error_code": 0, "partitions": [LEADER, {"error_code": 5, "leader": 1}]},
        {"error_code": 0, "partitions": [LEADER, {"error_code": 0, "leader": -1}]},
        {"error_code": 0, "partitions": [LEADER, {"error_code": 0}]},
    ],
)
def test_a_topic_is_ready_only_when_every_partition_has_a_leader(topic: dict[str, Any]) -> None:
    assert not topics._ready(topic)
    assert topics._ready({"error_code": 0, "partitions": [LEADER, {"error_code": 0, "leader": 0}]})


async def test_an_admin_client_that_cannot_connect_is_named(broker: Broker) -> None:
    broker.fail_start = True
    with pytest.raises(BrokerUnavailable) as caught:
        await ensure_topics(settings())
    assert str(caught.value) == (
        "cannot connect the admin client to Kafka at kafka:9092: KafkaConnectionError: "
        "Unable to bootstrap from [('kafka', 9092)]"
    )
    assert broker.created == [] and broker.admins[0].closed


def test_the_limit_is_found_among_the_resources_of_one_response() -> None:
    both = _response(
        (0, "other", [("max.message.bytes", "1")]), (0, "dlq", [("max.message.bytes", "7")])
    )
    assert max_message_bytes_of([both], "dlq") == 7
