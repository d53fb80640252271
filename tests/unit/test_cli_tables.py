"""Tables never cut an id: on an 80-column terminal every consumer and event id of
``show``, ``verify`` and the dry run's change list is printed whole, on one line (so it
can be copied), however long the other cells are."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from service.cli import show as show_module
from service.cli import verify as verify_module
from service.domain.consumer import ConsumerState
from service.domain.inbox import ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.replay.report import RichProgress
from service.replay.runner import Mode, ReplayReport
from service.replay.verify import Difference, VerifyReport

CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
EVENTS = [f"1c8f5b63-ad2e-4a4f-9b37-6e0c2d8f4a{i:02d}" for i in range(3)]
NOW = datetime(2026, 12, 2, 6, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, highlight=False)
    monkeypatch.setattr(show_module, "stdout_console", lambda: console)
    monkeypatch.setattr(verify_module, "stdout_console", lambda: console)
    return out


def _whole_on_a_line(text: str, ids: list[str]) -> None:
    assert "…" not in text
    for identifier in ids:
        assert any(identifier in line for line in text.splitlines()), identifier


def test_show_keeps_ids_whole_on_80_columns(narrow: io.StringIO) -> None:
    state = ConsumerState(
        uuid=CONSUMER,
        generation=12,
        deleted=False,
        project_id="a-rather-long-project-identifier-" * 2,
        user_id="user-1",
        consumer_type="INSTANCE",
        last_event_id=EVENTS[0],
        created_at=NOW,
        updated_at=NOW,
    )
    events = [
        ProcessedEvent(
            event_id=event_id,
            consumer_uuid=CONSUMER,
            payload_hash="h",
            outcome=OutcomeKind.REJECTED,
            reason=Reason.GENERATION_CONFLICT,
            generation_after=12,
            source=EventSource("consumer-events-with-a-long-name", 3, 1234567),
            processed_at=NOW,
        )
        for event_id in EVENTS
    ]
    show_module._print(CONSUMER, show_module._Found(state, events))
    _whole_on_a_line(narrow.getvalue(), [CONSUMER, *EVENTS])


def test_verify_differences_keep_ids_whole_on_80_columns(narrow: io.StringIO) -> None:
    report = VerifyReport(rebuild=ReplayReport(source="topic", mode=Mode.DRY_RUN))
    report.differences.append(
        Difference(CONSUMER, "different", {"project_id": ("expected-" * 6, "live-" * 8)})
    )
    verify_module._print(report, 10)
    _whole_on_a_line(narrow.getvalue(), [CONSUMER])


def test_replay_shows_a_progress_bar_with_count_rate_and_eta() -> None:
    """DESIGN.md: replay runs "with a progress bar and a summary".  On a terminal the bar
    shows events done of the total, the rate and the time left; it is transient (cleared
    at the end, leaving the terminal to the summary)."""
    out = io.StringIO()
    bar = RichProgress(Console(file=out, width=120, force_terminal=True))
    bar.start(200, "topic")
    bar.advance(50)
    bar.advance(20)
    bar.stop()
    text = out.getvalue()
    assert "70/200" in text and "ev/s" in text and "eta" in text, text
    assert text.endswith("\x1b[2K"), "the bar is cleared at the end"
