"""Read the service's tables directly, to compare with the model."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

State = dict[str, tuple[int, bool, str, str, str | None]]


async def consumer_state(database_url: str) -> State:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.uuid, c.generation, c.deleted_at IS NOT NULL, p.external_id,"
                    " u.external_id, t.name FROM consumers c"
                    " JOIN projects p ON p.id = c.project_id"
                    " JOIN users u ON u.id = c.user_id"
                    " LEFT JOIN consumer_types t ON t.id = c.consumer_type_id"
                )
            )
            return {r[0]: (int(r[1]), bool(r[2]), r[3], r[4], r[5]) for r in rows}
    finally:
        await engine.dispose()


async def inbox(database_url: str) -> dict[str, tuple[str, str | None]]:
    """event id -> (outcome, reason) as recorded in processed_events."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT event_id, outcome, reason FROM processed_events")
            )
            return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await engine.dispose()
