"""A consumer's state as the contract writes it: in outcome records (``state_after``)
and in the read API's answer (``GET /v1/consumers/{uuid}``).

One document shape for both, so a producer reads the state it got back from an outcome
and the state it read over HTTP with one function (``state_from_document``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from service.domain.consumer import ConsumerState

LIVE: Final = "live"
DELETED: Final = "deleted"


def state_document(state: ConsumerState) -> dict[str, Any]:
    """The fields a writer needs to decide its next change (no timestamps: the outcome
    record has ``processed_at``; the read API adds ``updated_at`` itself)."""
    return {
        "state": DELETED if state.deleted else LIVE,
        "generation": state.generation,
        "project_id": state.project_id,
        "user_id": state.user_id,
        "consumer_type": state.consumer_type,
    }


def state_from_document(consumer_uuid: str, doc: dict[str, Any]) -> ConsumerState:
    """The ``ConsumerState`` of a ``state_document`` (``ValueError`` if it is not one)."""
    try:
        state = doc["state"]
        generation = doc["generation"]
        project_id, user_id = doc["project_id"], doc["user_id"]
        consumer_type = doc.get("consumer_type")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a consumer state document: missing {exc}") from None
    if state not in (LIVE, DELETED) or not isinstance(generation, int):
        raise ValueError("not a consumer state document: bad state or generation")
    if not isinstance(project_id, str) or not isinstance(user_id, str):
        raise ValueError("not a consumer state document: owners must be strings")
    if consumer_type is not None and not isinstance(consumer_type, str):
        raise ValueError("not a consumer state document: consumer_type must be a string")
    updated = doc.get("updated_at")
    return ConsumerState(
        uuid=consumer_uuid,
        generation=generation,
        deleted=state == DELETED,
        project_id=project_id,
        user_id=user_id,
        consumer_type=consumer_type,
        last_event_id="",
        updated_at=datetime.fromisoformat(updated) if isinstance(updated, str) else None,
    )
