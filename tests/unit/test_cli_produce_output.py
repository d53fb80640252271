"""What `consumergen produce` prints besides the happy line: the exit code of a file
whose every line was sent, JSON output that keeps non-ASCII text as it is, a failed send
of a file's line in ``--json`` (its line, event id and the broker's message), the
producer name given to the events of a ``--wait`` file, and the progress bar on a
terminal for a large file (over ``service.testing.fake_aiokafka``, no broker)."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from click.testing import CliRunner, Result

import service.cli.produce as produce
import service.producer.client as client
import service.producer.replies as replies
from service.cli import cli
from service.testing.fake_aiokafka import FakeCluster, consumer_class, producer_class

CONSUMER = "00000000-0000-4000-8000-0000000000c1"
ENV = {
    "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "CONSUMERGEN_TOPIC": "events",
    "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    found = FakeCluster({"events": 3})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(found))
    yield found


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["produce", *args], env=ENV, input=input)


def line(**doc: Any) -> str:
    return json.dumps({"type": "consumer.upsert", "consumer_uuid": CONSUMER, **doc})


def test_a_file_whose_every_line_was_sent_exits_0(cluster: FakeCluster) -> None:
    result = run("--file", "-", input=line() + "\n" + line() + "\n")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 2


def test_json_output_keeps_non_ascii_text_as_it_is(cluster: FakeCluster) -> None:
    result = run("--file", "-", "--json", input=line(prøject="p") + "\n")
    assert result.exit_code == 1
    assert '"path": "$.prøject"' in result.stdout
    assert json.loads(result.stdout)["path"] == "$.prøject"


def test_a_failed_send_of_a_file_line_in_json_names_its_line_event_and_error(
    cluster: FakeCluster,
) -> None:
    cluster.refuse = lambda _: MessageSizeTooLargeError("too big for the broker")
    result = run("--file", "-", "--json", input=line(event_id=CONSUMER[:-2] + "e1") + "\n")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    message = document.pop("message")
    assert "MessageSizeTooLargeError" in message
    assert document == {
        "line": 1,
        "ok": False,
        "event_id": CONSUMER[:-2] + "e1",
        "reason": "send_failed",
    }
    assert result.stderr == f"error: line 1: send failed: {message}\n"


def test_the_events_of_a_wait_file_carry_the_producer_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No daemon answers here: what matters is what was sent (the outcome is a time-out)."""
    cluster = FakeCluster({"events": 3, "events.replies": 1})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(cluster))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(cluster))
    result = CliRunner().invoke(
        cli,
        ["produce", "--wait", "--timeout", "0.2", "--file", "-", "--producer", "batch-7"],
        env=ENV,
        input=line() + "\n",
    )
    assert result.exit_code == 1, result.output
    [written] = cluster.written("events")
    assert orjson.loads(written.value or b"{}")["producer"] == "batch-7"


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, keeping what rich draws on it."""

    def isatty(self) -> bool:
        return True


def _drawn(monkeypatch: pytest.MonkeyPatch, path: Path, advance_by: int) -> str:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with path.open("rb") as file, produce._progress(file) as advance:
        advance(advance_by)
    return terminal.getvalue()


def test_a_large_file_on_a_terminal_shows_a_progress_bar_that_then_goes_away(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"x" * produce.PROGRESS_MIN_BYTES)  # exactly the threshold: a bar
    drawn = _drawn(monkeypatch, path, produce.PROGRESS_MIN_BYTES // 4)
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn).replace("\r", "\n").splitlines()
    last = [frame for frame in frames if frame.strip()][-1]
    assert last.startswith("producing ━"), last
    assert re.search(r"━ +25% -:--:--$", last), last
    # Transient: once done, the cursor goes back up and the bar's line is erased.
    assert drawn.endswith("\r\x1b[1A\x1b[2K"), repr(drawn[-40:])


@pytest.mark.parametrize(
    ("size", "terminal"),
    [(produce.PROGRESS_MIN_BYTES - 1, True), (produce.PROGRESS_MIN_BYTES, False)],
)
def test_no_progress_bar_for_a_small_file_or_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, size: int, terminal: bool
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * size)
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with path.open("rb") as file, produce._progress(file) as advance:
        advance(size)
    assert stream.getvalue() == ""


def test_wait_json_output_keeps_non_ascii_text_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster({"events": 3, "events.replies": 1})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(cluster))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(cluster))
    result = CliRunner().invoke(
        cli,
        ["produce", "--wait", "--json", "--file", "-"],
        env=ENV,
        input=line(prøject="p") + "\n",
    )
    assert result.exit_code == 1, result.output
    assert "schema_violation at $.prøject: unknown field" in result.stdout
    assert cluster.written("events") == []


def test_a_producer_that_fails_on_hand_over_stops_the_file_after_reporting_it(
    cluster: FakeCluster,
) -> None:
    """The broker goes away once it took line 1: line 2's hand-over fails, so the producer
    is unusable, reading stops there (line 3 is never tried) and what was pending is still
    reported, in order."""

    def down_after_the_first(_: Any) -> None:
        cluster.up = False

    cluster.refuse = down_after_the_first
    result = run("--file", "-", "--json", input=(line() + "\n") * 3)
    assert result.exit_code == 1
    first, second = (json.loads(text) for text in result.stdout.splitlines())
    assert (first["line"], first["ok"]) == (1, True)
    assert (second["line"], second["ok"], second["reason"]) == (2, False, "send_failed")
    assert "fake broker is down" in second["message"]
    assert [e.split(": ")[1] for e in result.stderr.splitlines()] == ["line 2"]
    assert len(cluster.written("events")) == 1


def test_more_lines_than_the_window_are_all_reported_in_order(cluster: FakeCluster) -> None:
    """Past ``WINDOW`` sends in flight, results are reported as they are due; a bad first
    line reported then still makes the exit code 1."""
    count = produce.WINDOW + 5
    result = run("--file", "-", input="{broken\n" + (line() + "\n") * count)
    assert result.exit_code == 1, result.stderr[-500:]
    assert result.stderr.startswith("error: line 1: invalid event, not_json")
    numbers = [int(text.split(":")[0].removeprefix("line ")) for text in result.stdout.splitlines()]
    assert numbers == list(range(2, count + 2))
    assert len(cluster.written("events")) == count


def exactly(size: int) -> str:
    """A valid event line of exactly ``size`` bytes whose event encodes much smaller (its
    project id spelled with JSON escapes), so only the line's own size can refuse it."""
    text = json.dumps(
        {"type": "consumer.upsert", "consumer_uuid": CONSUMER, "project_id": "é" * 120}
    )
    assert len(text) <= size
    return "{" + " " * (size - len(text)) + text[1:]


@pytest.mark.parametrize(
    ("ending", "sent"),
    [("\r\n", True), ("\n", True), ("  \n", False)],
)
def test_a_line_s_size_is_counted_without_its_line_break_only(
    cluster: FakeCluster, ending: str, sent: bool
) -> None:
    result = CliRunner().invoke(
        cli,
        ["produce", "--file", "-"],
        env=ENV | {"CONSUMERGEN_MAX_EVENT_BYTES": "1024"},
        input=exactly(1024) + ending,
    )
    assert len(cluster.written("events")) == (1 if sent else 0), result.output
    if not sent:
        assert result.stderr.startswith("error: line 1: invalid event, too_large: 1026 bytes")


def test_text_after_the_json_is_not_trimmed_away(cluster: FakeCluster) -> None:
    result = run("--file", "-", input=line() + "X\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: line 1: invalid event, not_json")
    assert cluster.written("events") == []


def test_a_missing_reply_topic_is_one_line_naming_the_setting_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster({"events": 3})  # no events.replies
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(cluster))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(cluster))
    result = CliRunner().invoke(cli, ["produce", "--wait", "--consumer-uuid", CONSUMER], env=ENV)
    assert result.exit_code == 2
    assert (result.stdout, result.stderr) == (
        "",
        "error: CONSUMERGEN_REPLY_TOPIC: no such topic: events.replies\n",
    )


def test_a_file_s_bytes_feed_the_progress_display(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(line() + "\n\n" + line() + "\n")
    seen: list[Any] = []

    def progress(file: Any) -> Any:
        seen.append(file.name)
        return nullcontext(seen.append)

    monkeypatch.setattr(produce, "_progress", progress)
    assert run("--file", str(path)).exit_code == 0
    assert seen[0] == str(path)
    assert sum(seen[1:]) == path.stat().st_size  # every line's bytes, the blank one too


def test_a_single_event_over_the_size_limit_is_a_usage_error(cluster: FakeCluster) -> None:
    big = "€" * 200  # 600 bytes of UTF-8 in each of two fields
    result = CliRunner().invoke(
        cli,
        ["produce", "--consumer-uuid", CONSUMER, "--project", big, "--user", big],
        env=ENV | {"CONSUMERGEN_MAX_EVENT_BYTES": "1024"},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: invalid event, too_large: ")
    assert cluster.written("events") == []


@pytest.mark.parametrize("delete", [False, True])
def test_wait_sends_the_event_the_options_describe(
    monkeypatch: pytest.MonkeyPatch, delete: bool
) -> None:
    cluster = FakeCluster({"events": 3, "events.replies": 1})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(cluster))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(cluster))
    options = ["--expected-generation", "3", "--producer", "cli-7"]
    options += (
        ["--delete"] if delete else ["--project", "p1", "--user", "u1", "--consumer-type", "T"]
    )
    result = CliRunner().invoke(
        cli,
        ["produce", "--wait", "--timeout", "0.2", "--consumer-uuid", CONSUMER, *options],
        env=ENV,
    )
    assert result.exit_code == 1, result.output  # no daemon here: a time-out
    [written] = cluster.written("events")
    doc = orjson.loads(written.value or b"{}")
    assert (doc["type"], doc["expected_generation"], doc["producer"]) == (
        "consumer.delete" if delete else "consumer.upsert",
        3,
        "cli-7",
    )
    if not delete:
        assert (doc["project_id"], doc["user_id"], doc["consumer_type"]) == ("p1", "u1", "T")
