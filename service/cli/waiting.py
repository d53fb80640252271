"""`consumergen produce --wait`: send, then report what the daemon made of each event.

Each event is sent as a request (``EventProducer.request``: its outcome comes back on
this producer's own reply partition); the outcomes are reported in input order, up to
``WINDOW`` awaited at once.  The exit code is 0 only when every event was applied (or a
duplicate of an applied one); otherwise each other outcome is named on stderr.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final

import click

from service.contract.decode import InvalidEvent
from service.contract.state import state_document
from service.domain.events import ConsumerEvent
from service.producer import EventOutcome, EventProducer, OutcomeTimeout, PendingOutcome
from service.producer.client import ProduceError

#: Outcomes awaited at once.
WINDOW: Final = 500

Item = tuple[int | None, ConsumerEvent | InvalidEvent]


class WaitOutput:
    """One line per event on stdout (or one JSON object); problems on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def outcome(self, line: int | None, outcome: EventOutcome) -> bool:
        where = f"line {line}: " if line is not None else ""
        generation = outcome.generation_after
        if self.as_json:
            self._json(
                line,
                ok=outcome.ok,
                event_id=outcome.event_id,
                outcome=str(outcome.kind),
                reason=None if outcome.reason is None else str(outcome.reason),
                original_outcome=None if outcome.original is None else str(outcome.original),
                generation_after=generation,
                state_after=None
                if outcome.state_after is None
                else state_document(outcome.state_after),
            )
        else:
            at = "" if generation is None else f" (generation {generation})"
            click.echo(f"{where}{outcome.event_id}: {outcome.summary}{at}")
        if not outcome.ok:
            click.echo(f"error: {where}event {outcome.event_id} {outcome.summary}", err=True)
        return outcome.ok

    def problem(self, line: int | None, event_id: str | None, reason: str, error: Any) -> bool:
        where = f"line {line}: " if line is not None else ""
        click.echo(f"error: {where}{error}", err=True)
        if self.as_json:
            self._json(line, ok=False, event_id=event_id, reason=reason, message=str(error))
        return False

    def _json(self, line: int | None, **fields: Any) -> None:
        record = {"line": line, **fields} if line is not None else fields
        click.echo(json.dumps(record, ensure_ascii=False))


async def send_and_report(
    producer: EventProducer,
    items: AsyncIterator[Item],
    output: WaitOutput,
    wait_seconds: float,
) -> bool:
    """Request every event, report every outcome in order; True iff all were ok."""
    ok = True
    pending: deque[tuple[int | None, str | None, PendingOutcome | Exception]] = deque()

    async def report(line: int | None, event_id: str | None, item: Any) -> bool:
        if isinstance(item, InvalidEvent):
            return output.problem(
                line, None, item.reason.value, f"invalid event, {item.describe()} (not sent)"
            )
        if isinstance(item, ProduceError):
            return output.problem(line, event_id, "send_failed", f"send failed: {item}")
        try:
            return output.outcome(line, await item.outcome(wait_seconds))
        except OutcomeTimeout as exc:
            return output.problem(line, event_id, "timeout", exc)

    async for line, event in items:
        if isinstance(event, InvalidEvent):
            pending.append((line, None, event))
        else:
            try:
                pending.append((line, event.event_id, await producer.request(event)))
            except (InvalidEvent, ProduceError) as exc:
                pending.append((line, event.event_id, exc))
        while len(pending) >= WINDOW:
            ok = await report(*pending.popleft()) and ok
    while pending:
        ok = await report(*pending.popleft()) and ok
    return ok
