"""``processed_at`` on a batch's outcome records is the worker's clock reading for that
batch, passed in, not a time each record takes for itself.

The worker reads its clock once per batch (the same moment stamps the batch's dead
letters, ``error.failed_at``), so an operator matching a batch's outcome records with its
dead letters sees one time; a record that took ``datetime.now()`` on its own would drift
from them.  A fixed moment far in the past shows which one was used.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiokafka import TopicPartition

from service.contract.decode import InvalidEvent
from service.daemon.batch import outcome_messages
from service.domain.outcomes import Outcome, OutcomeKind, Reason
from service.testing.fake_kafka import fetched_record

TP = TopicPartition("consumer-events", 3)
MOMENT = datetime(2001, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
CONSUMER = "00000000-0000-4000-8000-000000000101"
EVENT = "00000000-0000-4000-8000-000000000201"


def test_every_outcome_record_of_a_batch_carries_the_moment_the_worker_passed() -> None:
    applied = Outcome(EVENT, CONSUMER, OutcomeKind.APPLIED, None, 1, attempts=1)
    settled = [(fetched_record(TP, 7, b"{}", CONSUMER.encode()), applied)]
    invalid = [(fetched_record(TP, 8, b"nope"), InvalidEvent(Reason.NOT_JSON, "not JSON"))]

    messages = outcome_messages(settled, invalid, MOMENT)

    documents = [json.loads(message.value) for message in messages]
    assert [doc["source"]["offset"] for doc in documents] == [7, 8]
    assert [doc["processed_at"] for doc in documents] == ["2001-02-03T04:05:06.789Z"] * 2
