"""A fixed, seeded, realistic event mix, and its expected end state.

Same seed, same events (ids, order and bytes).  The generator keeps its own belief of
every consumer (the tests' independent ``Model``), so conditional events mostly carry
the right generation and some are deliberately stale, as in real traffic:

* a consumer that does not exist (yet, or any more): a create with
  ``expected_generation: null`` (most), an unconditional create, or now and then a
  delete of nothing (``consumer_not_found``);
* a live consumer: unconditional updates, conditional updates with the right
  generation, stale preconditions (``generation_conflict``), a create of what exists
  (``consumer_exists``), and a few deletes;
* about 1% redeliveries of an earlier event (same id, same bytes: ``duplicate``) and
  0.1% reuses of an id for another change (``event_id_reused``).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from service.testing.model import Model

Doc = dict[str, Any]
Record = tuple[bytes, bytes]  # (key, value)

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Workload:
    """An endless deterministic stream of event documents over ``consumers`` consumers."""

    def __init__(
        self,
        consumers: int = 10_000,
        seed: int = 1,
        duplicates: float = 0.01,
        reused: float = 0.001,
    ) -> None:
        self.rng = random.Random(seed)
        self.ids = [
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(consumers)
        ]
        self.belief = Model()
        self.duplicates = duplicates
        self.reused = reused
        self.recent: list[Doc] = []  # the last events, for redeliveries
        self.count = 0
        self.projects = [f"project-{i}" for i in range(20)]
        #: outcome (as the model names it) -> events, duplicates included
        self.tally: dict[str, int] = {}

    def _apply(self, doc: Doc) -> None:
        result = self.belief.apply(doc)
        self.tally[result] = self.tally.get(result, 0) + 1

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _doc(self, who: str, **fields: Any) -> Doc:
        doc: Doc = {
            "schema_version": 1,
            "event_id": self._uuid(),
            "type": "consumer.upsert",
            "consumer_uuid": who,
            "occurred_at": (_EPOCH + timedelta(milliseconds=self.count))
            .isoformat()
            .replace("+00:00", "Z"),
            "producer": "benchmark",
        }
        doc.update(fields)
        return doc

    def next(self) -> Doc:
        rng = self.rng
        self.count += 1
        roll = rng.random()
        if self.recent and roll < self.duplicates:
            doc = dict(rng.choice(self.recent))  # redelivered: same id, same payload
            self._apply(doc)
            return doc
        if self.recent and roll < self.duplicates + self.reused:
            doc = dict(rng.choice(self.recent))
            doc["project_id"] = "someone-else"  # same id, another change
            doc["type"] = "consumer.upsert"
            doc.pop("expected_generation", None)
            self._apply(doc)
            return doc
        who = rng.choice(self.ids)
        state = self.belief.consumers.get(who)
        live = state is not None and not state.deleted
        kind = rng.random()
        owners = {
            "project_id": rng.choice(self.projects),
            "user_id": f"user-{rng.randrange(50)}",
        }
        if not live:
            if kind < 0.85:
                doc = self._doc(who, expected_generation=None, consumer_type="INSTANCE", **owners)
            elif kind < 0.97:
                doc = self._doc(who)  # unconditional create, incomplete owners
            else:
                doc = self._doc(who, type="consumer.delete")  # consumer_not_found
        else:
            assert state is not None
            if kind < 0.50:
                doc = self._doc(who, **owners)
            elif kind < 0.85:
                doc = self._doc(who, expected_generation=state.generation, **owners)
            elif kind < 0.93:
                doc = self._doc(who, expected_generation=max(0, state.generation - 1))  # stale
            elif kind < 0.96:
                doc = self._doc(who, expected_generation=None, consumer_type="INSTANCE")
            elif kind < 0.98:
                doc = self._doc(who, type="consumer.delete", expected_generation=state.generation)
            else:
                doc = self._doc(who, type="consumer.delete")
        self._apply(doc)
        self.recent.append(doc)
        if len(self.recent) > 5_000:
            del self.recent[:1_000]
        return doc

    def docs(self, n: int) -> list[Doc]:
        return [self.next() for _ in range(n)]

    def records(self) -> Iterator[Record]:
        while True:
            doc = self.next()
            yield encode(doc)


def encode(doc: Doc) -> Record:
    return doc["consumer_uuid"].encode(), json.dumps(doc, separators=(",", ":")).encode()
