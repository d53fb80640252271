"""What a partition worker is given of the settings (``WorkerConfig.from_settings`` in
``service.daemon.ports``): the batch size, the record bound, the retry waits, the group
(named in the batch spans) and the reply policy: which topics replies may go to,
whether every event wants an outcome record, and who hears of a refused reply (the
daemon's ``consumergen_replies_refused_total``)."""

from __future__ import annotations

from service.contract.replies import request_headers
from service.daemon.ports import WorkerConfig
from service.testing.fake_edges import fake_settings

URL = "sqlite+aiosqlite:///unused.sqlite3"


def test_the_worker_gets_the_settings_it_reads() -> None:
    settings = fake_settings(
        URL,
        batch_max_events=17,
        max_event_bytes=4096,
        infra_retry_wait_initial_seconds=0.25,
        infra_retry_wait_max_seconds=3.5,
        group_id="the-group",
    )
    config = WorkerConfig.from_settings(settings)
    assert (config.batch_max_events, config.max_event_bytes) == (17, 4096)
    assert (config.retry_wait_initial, config.retry_wait_max) == (0.25, 3.5)
    assert config.group_id == "the-group"


def test_replies_go_only_to_the_allowed_topics_and_a_refusal_is_heard() -> None:
    refusals: list[None] = []
    settings = fake_settings(URL, allowed_reply_topics="other.replies")
    config = WorkerConfig.from_settings(settings, lambda: refusals.append(None))
    assert config.replies is not None
    assert config.replies.allowed == frozenset({"events.replies", "other.replies"})
    route = config.replies.route(request_headers("other.replies", 2, b"c-1"))
    assert route is not None and (route.topic, route.partition) == ("other.replies", 2)
    assert refusals == []
    assert config.replies.route(request_headers("elsewhere", 0, b"c-2")) is None
    assert refusals == [None]  # heard once: the daemon counts it


def test_without_a_listener_a_refused_reply_is_still_refused() -> None:
    config = WorkerConfig.from_settings(fake_settings(URL))
    assert config.replies is not None
    assert config.replies.route(request_headers("elsewhere", 0, b"c")) is None


def test_every_event_wants_an_outcome_record_only_with_an_outcomes_topic() -> None:
    with_topic = WorkerConfig.from_settings(fake_settings(URL, outcomes_topic="events.outcomes"))
    without = WorkerConfig.from_settings(fake_settings(URL, outcomes_topic=None))
    assert with_topic.replies is not None and with_topic.replies.every_outcome is True
    assert without.replies is not None and without.replies.every_outcome is False
