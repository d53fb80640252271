"""``upgrade`` migrates to the revision it is asked for, and to the newest by default."""

from __future__ import annotations

from service.store.migrate import head_revision, upgrade


async def test_upgrade_stops_at_the_target_it_is_given(sqlite_url: str) -> None:
    assert await upgrade(sqlite_url, "base") is None  # nothing migrated yet
    assert await upgrade(sqlite_url) == head_revision()
