"""Property: random streams give the same outcomes and state however they are applied.

One-by-one, in random batches over a different interleaving of the consumers, and the
whole stream applied twice: identical final state and outcomes, and both agree with
an in-memory model written here from DESIGN.md (deliberately not using
``service.domain.rules``), which also checks "generation = number of applied changes".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType
from service.domain.outcomes import Outcome
from tests.apply.helpers import Db, event

CONSUMERS = [
    "aaaaaaaa-0000-4000-8000-000000000001",
    "bbbbbbbb-0000-4000-8000-000000000002",
    "cccccccc-0000-4000-8000-000000000003",
]
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"

Shape = tuple[str, str | None, int | None, str | None]


@dataclass
class ModelConsumer:
    generation: int
    deleted: bool
    project: str
    user: str
    consumer_type: str | None
    applied: int = 0


@dataclass
class Model:
    """DESIGN.md, one event at a time, with plain dicts."""

    consumers: dict[str, ModelConsumer] = field(default_factory=dict)
    inbox: dict[str, tuple[str, Shape]] = field(default_factory=dict)

    def apply(self, ev: ConsumerEvent) -> Shape:
        digest = ev.payload_hash()
        here = self.consumers.get(ev.consumer_uuid)
        if ev.event_id in self.inbox:
            seen_digest, (kind, reason, generation, _) = self.inbox[ev.event_id]
            if seen_digest != digest:
                return ("rejected", "event_id_reused", here.generation if here else None, None)
            return ("duplicate", reason, generation, kind)
        result = self._change(ev, here)
        self.inbox[ev.event_id] = (digest, result)
        return result

    def _change(self, ev: ConsumerEvent, here: ModelConsumer | None) -> Shape:
        exists = here is not None and not here.deleted
        current = here.generation if here else None
        wanted = ev.expected_generation

        def rejected(reason: str) -> Shape:
            return ("rejected", reason, current, None)

        if ev.type is EventType.DELETE:
            if not exists:
                return rejected("consumer_not_found")
            if wanted is None:
                return rejected("consumer_exists")
            if wanted is not UNCONDITIONAL and wanted != current:
                return rejected("generation_conflict")
            assert here is not None
            here.generation += 1
            here.deleted = True
            here.applied += 1
            return ("applied", None, here.generation, None)

        creating = wanted is None or (wanted is UNCONDITIONAL and not exists)
        if creating:
            if exists:
                return rejected("consumer_exists")
            previous = here.generation if here else 0
            applied = here.applied if here else 0
            self.consumers[ev.consumer_uuid] = ModelConsumer(
                previous + 1,
                False,
                ev.project_id or PLACEHOLDER,
                ev.user_id or PLACEHOLDER,
                ev.consumer_type,
                applied + 1,
            )
            return ("applied", None, previous + 1, None)
        if not exists:
            return rejected("consumer_not_found")
        if wanted is not UNCONDITIONAL and wanted != current:
            return rejected("generation_conflict")
        assert here is not None
        here.generation += 1
        here.applied += 1
        here.project = ev.project_id or here.project
        here.user = ev.user_id or here.user
        here.consumer_type = ev.consumer_type or here.consumer_type
        return ("applied", None, here.generation, None)

    def state(self) -> list[tuple[Any, ...]]:
        return sorted(
            (u, c.generation, c.deleted, c.project, c.user, c.consumer_type)
            for u, c in self.consumers.items()
        )


def shape(o: Outcome) -> Shape:
    return (
        o.kind.value,
        o.reason.value if o.reason else None,
        o.generation_after,
        o.original.value if o.original else None,
    )


spec = st.tuples(
    st.sampled_from([EventType.UPSERT, EventType.UPSERT, EventType.DELETE]),
    st.one_of(st.just(UNCONDITIONAL), st.none(), st.integers(0, 4)),
    st.sampled_from([None, "p1", "p2"]),
    st.sampled_from([None, "TYPE_X"]),
    # 0: a new event, 1: repeat an earlier event (duplicate), 2: reuse an earlier id
    st.sampled_from([0, 0, 0, 1, 2]),
    st.integers(0, 100),
)


@st.composite
def scenario(
    draw: st.DrawFn,
) -> tuple[dict[str, list[ConsumerEvent]], list[int], list[int], list[int]]:
    streams: dict[str, list[ConsumerEvent]] = {}
    for consumer in CONSUMERS[: draw(st.integers(1, 3))]:
        events: list[ConsumerEvent] = []
        for kind, expected, project, ctype, mode, pick in draw(st.lists(spec, max_size=7)):
            if mode and events:
                earlier = events[pick % len(events)]
                if mode == 1:
                    events.append(earlier)
                    continue
                events.append(event(consumer, kind, expected, event_id=earlier.event_id,
                                    project_id="reused-" + str(pick)))  # fmt: skip
                continue
            events.append(event(consumer, kind, expected, project_id=project, consumer_type=ctype))
        streams[consumer] = events
    labels = [c for c, events in streams.items() for _ in events]
    order_a = [CONSUMERS.index(c) for c in draw(st.permutations(labels))]
    order_b = [CONSUMERS.index(c) for c in draw(st.permutations(labels))]
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=len(labels) + 1))
    return streams, order_a, order_b, batches


def interleave(
    streams: dict[str, list[ConsumerEvent]], order: list[int]
) -> list[tuple[str, int, ConsumerEvent]]:
    """Merge per-consumer streams in ``order``, keeping each consumer's own order."""
    positions = dict.fromkeys(streams, 0)
    merged = []
    for index in order:
        consumer = CONSUMERS[index]
        merged.append((consumer, positions[consumer], streams[consumer][positions[consumer]]))
        positions[consumer] += 1
    return merged


async def final_state(db: Db) -> list[tuple[Any, ...]]:
    rows = await db.rows(
        "SELECT c.uuid, c.generation, c.deleted_at IS NOT NULL, p.external_id, u.external_id,"
        " t.name FROM consumers c JOIN projects p ON p.id = c.project_id"
        " JOIN users u ON u.id = c.user_id"
        " LEFT JOIN consumer_types t ON t.id = c.consumer_type_id"
    )
    return sorted((r[0], int(r[1]), bool(r[2]), r[3], r[4], r[5]) for r in rows)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenario())
async def test_one_by_one_batches_and_twice_agree_with_the_model(db: Db, case: Any) -> None:
    streams, order_a, order_b, batch_sizes = case
    model = Model()
    expected = {
        (c, i): model.apply(ev) for c, events in streams.items() for i, ev in enumerate(events)
    }
    for c, here in model.consumers.items():
        assert here.generation == here.applied, c  # the invariant, in the model itself

    # A: one by one.
    await db.truncate()
    merged_a = interleave(streams, order_a)
    one_by_one = {(c, i): shape(await db.applier.apply(ev)) for c, i, ev in merged_a}
    state_a = await final_state(db)
    applied_a = await db.rows(
        "SELECT consumer_uuid, count(*) FROM processed_events WHERE outcome = 'applied'"
        " GROUP BY consumer_uuid"
    )
    # ... and again: every event is now a duplicate (or a reused id), the state unchanged.
    twice = {(c, i): shape(await db.applier.apply(ev)) for c, i, ev in merged_a}
    assert await final_state(db) == state_a

    # B: another interleaving, random batch boundaries.
    await db.truncate()
    merged_b = interleave(streams, order_b)
    batched: dict[tuple[str, int], Shape] = {}
    start, sizes = 0, iter(batch_sizes * (len(merged_b) + 1))
    while start < len(merged_b):
        chunk = merged_b[start : start + next(sizes)]
        outcomes = await db.applier.apply_batch([(ev, None) for _, _, ev in chunk])
        batched.update({(c, i): shape(o) for (c, i, _), o in zip(chunk, outcomes, strict=True)})
        start += len(chunk)
    state_b = await final_state(db)

    assert one_by_one == expected
    assert batched == expected
    assert state_a == state_b == model.state()
    assert sorted((u, int(n)) for u, n in applied_a) == sorted(
        (u, c.applied) for u, c in model.consumers.items() if c.applied
    )
    for key, first in one_by_one.items():
        again = twice[key]
        if first[0] == "rejected" and first[1] == "event_id_reused":
            assert again[:2] == first[:2]
        elif first[0] == "duplicate":
            assert again == first
        else:
            assert again == ("duplicate", first[1], first[2], first[0])
