"""Which setting feeds which of a worker's bounds (``WorkerConfig.from_settings``).

The worker tests build ``WorkerConfig`` by hand, so only these tests see the daemon's own
mapping: a bound read from the wrong setting, a reply policy lost or its refusal
counter never called would pass every worker test and still ship."""

from __future__ import annotations

from service.config import load_settings
from service.contract.replies import ReplyRoute, request_headers
from service.daemon.ports import WorkerConfig


def test_each_bound_of_a_worker_comes_from_its_own_setting() -> None:
    settings = load_settings(
        batch_max_events=7,
        max_event_bytes=2048,
        infra_retry_wait_initial_seconds=0.3,
        infra_retry_wait_max_seconds=4.5,
        group_id="ledger-group",
        outcomes_topic="ledger-outcomes",
        reply_topic="ledger-replies",
        allowed_reply_topics="audit-replies, other-replies",
    )
    config = WorkerConfig.from_settings(settings)
    assert (
        config.batch_max_events,
        config.max_event_bytes,
        config.retry_wait_initial,
        config.retry_wait_max,
        config.group_id,
    ) == (7, 2048, 0.3, 4.5, "ledger-group")
    assert config.replies is not None
    assert config.replies.allowed == {"ledger-replies", "audit-replies", "other-replies"}
    assert config.replies.every_outcome is True


def test_without_an_outcomes_topic_only_the_requests_get_an_outcome() -> None:
    config = WorkerConfig.from_settings(load_settings(outcomes_topic=None))
    assert config.replies is not None
    assert config.replies.every_outcome is False


def test_a_reply_refused_is_heard_by_the_daemons_counter_and_an_allowed_one_is_routed() -> None:
    """The daemon passes its ``consumergen_replies_refused_total`` increment as
    ``refused_reply``: each request naming a topic outside the allowed calls it once,
    a request for an allowed topic gets its route and calls nothing."""
    refused: list[None] = []
    settings = load_settings(reply_topic="ledger-replies", allowed_reply_topics="")
    config = WorkerConfig.from_settings(settings, refused_reply=lambda: refused.append(None))
    assert config.replies is not None
    assert config.replies.route(request_headers("elsewhere", 0, b"c-1")) is None
    assert len(refused) == 1
    assert config.replies.route(request_headers("ledger-replies", 2, b"c-2")) == ReplyRoute(
        "ledger-replies", 2, b"c-2"
    )
    assert len(refused) == 1


def test_without_a_counter_a_refused_reply_is_only_not_routed() -> None:
    config = WorkerConfig.from_settings(load_settings(reply_topic="ledger-replies"))
    assert config.replies is not None
    assert config.replies.route(request_headers("elsewhere", 0, b"c-1")) is None
    assert config.replies.route(request_headers("ledger-replies", 0, b"c-2")) is not None
