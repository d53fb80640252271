"""The producer side: build, validate and publish consumer events (async Python API).

async with EventProducer(settings) as producer:
    sent = await producer.upsert(consumer_uuid, expected_generation=None)
    outcome = await producer.send_and_wait(event)          # request-reply
    result = await producer.update(consumer_uuid, change)  # read-modify-write
"""

from service.contract.decode import InvalidEvent
from service.domain.outcomes import Reason
from service.kafka.clients import BrokerUnavailable
from service.producer.client import (
    EventProducer,
    ItemResult,
    PendingOutcome,
    ProduceError,
    SendResult,
)
from service.producer.events import event_from_document, event_from_line, new_event
from service.producer.reads import ConsumerReader, ReadRefused, ReadUnavailable
from service.producer.replies import EventOutcome, OutcomeTimeout
from service.producer.update import Change, RetryPolicy, UpdateResult

__all__ = [
    "BrokerUnavailable",
    "Change",
    "ConsumerReader",
    "EventOutcome",
    "EventProducer",
    "InvalidEvent",
    "ItemResult",
    "OutcomeTimeout",
    "PendingOutcome",
    "ProduceError",
    "ReadRefused",
    "ReadUnavailable",
    "Reason",
    "RetryPolicy",
    "SendResult",
    "UpdateResult",
    "event_from_document",
    "event_from_line",
    "new_event",
]
