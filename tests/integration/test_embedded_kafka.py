"""Regressions of the embedded broker launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.embedded import kafka
from service.embedded.kafka import KafkaBroker


def test_a_cluster_id_starting_with_a_dash_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 in 64 random ids starts with "-"; the storage tool once took it for an option.
    monkeypatch.setattr(kafka, "_cluster_id", lambda: "-AbCdEfGhIjKlMnOpQrStU")
    broker = KafkaBroker(tmp_path / "kafka", heap="256m")
    try:
        broker.start()
        meta = (tmp_path / "kafka" / "logs" / "meta.properties").read_text()
        assert "cluster.id=-AbCdEfGhIjKlMnOpQrStU" in meta
    finally:
        broker.stop()
