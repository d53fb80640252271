"""An independent statement of DESIGN.md's semantics, for checking the database against.

Deliberately written without the service's code: plain dicts, one event at a time,
in the order Kafka delivers one consumer's events (one key, one partition, one order).
If this model and the service disagree, one of them misreads DESIGN.md.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
ABSENT = object()


@dataclass
class ModelConsumer:
    generation: int
    deleted: bool
    project: str
    user: str
    consumer_type: str | None


@dataclass
class Model:
    consumers: dict[str, ModelConsumer] = field(default_factory=dict)
    inbox: dict[str, tuple[str, str]] = field(default_factory=dict)  # event id -> (hash, outcome)
    outcomes: dict[str, str] = field(default_factory=dict)  # event id -> first outcome

    @staticmethod
    def _hash(doc: dict[str, Any]) -> str:
        meaning = {k: v for k, v in doc.items() if k != "producer"}
        return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()

    def apply(self, doc: dict[str, Any]) -> str:
        """Apply one valid event document; returns applied / duplicate / rejected:<reason>."""
        event_id = doc["event_id"]
        digest = self._hash(doc)
        if event_id in self.inbox:
            seen_hash, _ = self.inbox[event_id]
            return "duplicate" if seen_hash == digest else "rejected:event_id_reused"
        result = self._decide(doc)
        self.inbox[event_id] = (digest, result)
        self.outcomes[event_id] = result
        return result

    def report(self, doc: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """Apply ``doc`` and return what its outcome record must say: (outcome, reason,
        original_outcome).  A duplicate reports its first processing again: that
        outcome as ``original_outcome`` and its reason (DESIGN.md: "the original outcome
        is reported again")."""
        result = self.apply(doc)
        if result == "duplicate":
            kind, _, reason = self.outcomes[doc["event_id"]].partition(":")
            return "duplicate", reason or None, kind
        kind, _, reason = result.partition(":")
        return kind, reason or None, None

    def _decide(self, doc: dict[str, Any]) -> str:
        key = doc["consumer_uuid"]
        current = self.consumers.get(key)
        live = current is not None and not current.deleted
        expected = doc.get("expected_generation", ABSENT)
        if expected is None and live:
            return "rejected:consumer_exists"
        if isinstance(expected, int):
            if not live:
                return "rejected:consumer_not_found"
            assert current is not None
            if current.generation != expected:
                return "rejected:generation_conflict"
        if doc["type"] == "consumer.delete":
            if not live:
                return "rejected:consumer_not_found"
            assert current is not None
            current.generation += 1
            current.deleted = True
            return "applied"
        if live:
            assert current is not None
            current.generation += 1
            current.project = doc.get("project_id", current.project)
            current.user = doc.get("user_id", current.user)
            current.consumer_type = doc.get("consumer_type", current.consumer_type)
            return "applied"
        previous = current.generation if current is not None else 0
        self.consumers[key] = ModelConsumer(
            generation=previous + 1,
            deleted=False,
            project=doc.get("project_id", PLACEHOLDER),
            user=doc.get("user_id", PLACEHOLDER),
            consumer_type=doc.get("consumer_type"),
        )
        return "applied"

    def state(self) -> dict[str, tuple[int, bool, str, str, str | None]]:
        return {
            k: (c.generation, c.deleted, c.project, c.user, c.consumer_type)
            for k, c in self.consumers.items()
        }


def event_doc(
    consumer: str,
    *,
    delete: bool = False,
    expected: Any = ABSENT,
    project: str | None = None,
    user: str | None = None,
    consumer_type: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "consumer.delete" if delete else "consumer.upsert",
        "consumer_uuid": consumer,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if expected is not ABSENT:
        doc["expected_generation"] = expected
    for name, value in (
        ("project_id", project),
        ("user_id", user),
        ("consumer_type", consumer_type),
    ):
        if value is not None:
            doc[name] = value
    return doc
