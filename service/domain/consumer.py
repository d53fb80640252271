"""A consumer as the rules see it, and the bound on its generation."""

from __future__ import annotations

from dataclasses import dataclass
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
    """A consumer row as the rules see it (owners by their external ids)."""

    uuid: str
    generation: int
    deleted: bool
    project_id: str
    user_id: str
    consumer_type: str | None
    last_event_id: str

    @property
    def live(self) -> bool:
        return not self.deleted
