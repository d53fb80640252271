"""``upgrade`` migrates to the revision it is asked for, and to the newest by default;
the newest is one revision, or a refusal naming the heads."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store import migrate
from service.store.migrate import head_revision, upgrade


async def test_upgrade_stops_at_the_target_it_is_given(sqlite_url: str) -> None:
    assert await upgrade(sqlite_url, "base") is None  # nothing migrated yet
    assert await upgrade(sqlite_url) == head_revision()


def test_two_heads_are_refused_naming_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two migrations written on separate branches, both on the same parent: which one
    is newest cannot be told, and the message names both for whoever merges them."""
    (tmp_path / "versions").mkdir()
    for revision in ("aaa", "bbb"):
        (tmp_path / "versions" / f"{revision}.py").write_text(
            f"revision = {revision!r}\ndown_revision = None\n"
            "branch_labels = None\ndepends_on = None\n"
        )
    monkeypatch.setattr(migrate, "MIGRATIONS", tmp_path)
    with pytest.raises(RuntimeError) as caught:
        migrate.head_revision()
    assert str(caught.value) == "migrations must have exactly one head, found ['aaa', 'bbb']"
