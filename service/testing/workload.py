"""A realistic, seeded mix of events over many consumers, and its expected end state."""

from __future__ import annotations

import copy
import random
import uuid
from typing import Any

from service.testing.model import ABSENT, Model, event_doc


def mixed_stream(
    consumers: int, events: int, seed: int, duplicates: float = 0.02
) -> list[dict[str, Any]]:
    """Creates, unconditional and conditional updates, stale preconditions, deletes,
    re-creates, redeliveries of the same event and a few reused event ids.

    The generator tracks what it believes the state is (with its own ``Model``), so
    most conditional events are right and some are deliberately stale."""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(consumers)]
    belief = Model()
    stream: list[dict[str, Any]] = []
    projects = [f"project-{i}" for i in range(5)]
    while len(stream) < events:
        roll = rng.random()
        if stream and roll < duplicates:
            stream.append(copy.deepcopy(rng.choice(stream)))  # redelivered: same id, same payload
            continue
        if stream and roll < duplicates * 1.25:
            reused = copy.deepcopy(rng.choice(stream))
            reused["project_id"] = "someone-else"  # same id, other payload
            reused["type"] = "consumer.upsert"
            reused.pop("expected_generation", None)
            stream.append(reused)
            continue
        who = rng.choice(ids)
        state = belief.consumers.get(who)
        live = state is not None and not state.deleted
        kind = rng.random()
        project, user = rng.choice(projects), f"user-{rng.randrange(3)}"
        if not live:
            if kind < 0.8:
                doc = event_doc(
                    who, expected=None, consumer_type="INSTANCE", project=project, user=user
                )
            elif kind < 0.9:
                doc = event_doc(who)  # unconditional create, incomplete owners
            else:
                doc = event_doc(who, delete=True)  # consumer_not_found
        else:
            assert state is not None
            if kind < 0.45:
                doc = event_doc(who, project=project, user=user)
            elif kind < 0.8:
                doc = event_doc(who, expected=state.generation, project=project, user=user)
            elif kind < 0.88:
                doc = event_doc(who, expected=max(0, state.generation - 1))  # stale
            elif kind < 0.92:
                doc = event_doc(who, expected=None)  # consumer_exists
            elif kind < 0.97:
                doc = event_doc(who, delete=True, expected=state.generation)
            else:
                doc = event_doc(who, delete=True)
        belief.apply(doc)
        stream.append(doc)
    return stream


def expected_state(stream: list[dict[str, Any]]) -> Model:
    model = Model()
    for doc in stream:
        model.apply(doc)
    return model


__all__ = ["ABSENT", "expected_state", "mixed_stream"]
