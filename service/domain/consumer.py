"""A consumer as the rules see it, and the bound on its generation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

#: The one bound on a generation (and on ``expected_generation``): 2**53 - 1, exact in
#: every JSON implementation, so a producer in any language can send any generation the
#: service can reach.  The databases store it in a signed 64-bit column.
MAX_GENERATION: Final = 9_007_199_254_740_991


@dataclass(frozen=True, slots=True)
class Owners:
    """The placeholder owners of a consumer created without project/user."""

    project_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """A consumer row (owners by their external ids): the one type of it, for the rules,
    the store's writes and the read side.

    The timestamps are as read from the store and the rules never look at them: the
    store sets them when it writes, so a state the rules produce carries those of the
    state it came from (or None).  ``deleted`` is what the rules go by.
    """

    uuid: str
    generation: int
    deleted: bool
    project_id: str
    user_id: str
    consumer_type: str | None
    last_event_id: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def live(self) -> bool:
        return not self.deleted
