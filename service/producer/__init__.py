"""The producer side: build, validate and publish consumer events (async Python API).

async with EventProducer(settings) as producer:
    sent = await producer.upsert(consumer_uuid, expected_generation=None)
"""

from service.contract.decode import InvalidEvent
from service.domain.outcomes import Reason
from service.kafka.clients import BrokerUnavailable
from service.producer.client import EventProducer, ItemResult, ProduceError, SendResult
from service.producer.events import event_from_document, event_from_line, new_event

__all__ = [
    "BrokerUnavailable",
    "EventProducer",
    "InvalidEvent",
    "ItemResult",
    "ProduceError",
    "Reason",
    "SendResult",
    "event_from_document",
    "event_from_line",
    "new_event",
]
