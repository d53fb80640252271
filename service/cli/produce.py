"""`consumergen produce`: validate and publish consumer events.

One event from options, or many from a JSONL file (``--file PATH`` or ``--file -`` for
stdin). Lines are validated with the daemon's rules before anything is sent; a bad line
is reported (line number and reason) and skipped, and the exit code is 1 at the end,
unless ``--stop-on-error`` stops reading at the first bad line.  A single event made of
options that the contract refuses (or a malformed ``--consumer-uuid``) is a bad
argument: exit 2, nothing sent.  ``--wait`` reports each
event's outcome instead of its offset (``service.cli.waiting``).

Why this module is long: one verb with two input modes (options, JSONL) and two
reports (sent, outcome), sharing their line boundary and their error handling.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import IO, Any, Final

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from service.cli._common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    settings_from,
    start_tracing,
    uuid_parameter,
)
from service.cli.waiting import Item, WaitOutput, send_and_report
from service.config import ConfigError, Settings
from service.contract.decode import InvalidEvent, undecodable
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.kafka.clients import BrokerUnavailable
from service.producer import EventProducer, ProduceError, SendResult, event_from_line, new_event

#: Files at least this big get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES: Final = 1_000_000
#: Unacknowledged sends kept in flight by the CLI (results print in file order).
WINDOW: Final = 2000


@click.command("produce")
@click.option("--consumer-uuid", callback=uuid_parameter, help="The consumer (single event mode).")
@click.option("--project", "project_id", help="Owning project (upsert).")
@click.option("--user", "user_id", help="Owning user (upsert).")
@click.option("--consumer-type", help="Consumer type, e.g. INSTANCE (upsert).")
@click.option(
    "--expected-generation",
    metavar="N|null",
    help="CAS precondition: N = must be at generation N, null = must not exist; "
    "leave out for an unconditional change.",
)
@click.option("--delete", is_flag=True, help="Send consumer.delete instead of consumer.upsert.")
@click.option("--producer", "producer_name", help="Who is sending (the event's producer field).")
@click.option(
    "--file",
    "file",
    type=click.File("rb"),
    help="JSONL input, one event document per line ('-' = stdin). schema_version, event_id "
    "and occurred_at may be left out (filled with 1, a fresh UUID, now).",
)
@click.option("--stop-on-error", is_flag=True, help="Stop at the first bad line (default: skip).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event on stdout.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for each event's outcome (request-reply on CONSUMERGEN_REPLY_TOPIC, by "
    "default TOPIC.replies, which `topics create` and `run --local` create) and "
    "print it; exit 1 unless every event was applied (or a duplicate of an applied one).",
)
@click.option(
    "--timeout",
    "wait_seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="With --wait: seconds to wait for each outcome (CONSUMERGEN_OUTCOME_WAIT_SECONDS).",
)
@click.option(
    "--bootstrap-server", help="Kafka host:port[,host:port] (CONSUMERGEN_BOOTSTRAP_SERVERS)."
)
@click.option("--topic", help="Events topic (CONSUMERGEN_TOPIC).")
@click.pass_context
def command(
    ctx: click.Context,
    consumer_uuid: str | None,
    project_id: str | None,
    user_id: str | None,
    consumer_type: str | None,
    expected_generation: str | None,
    delete: bool,
    producer_name: str | None,
    file: IO[bytes] | None,
    stop_on_error: bool,
    as_json: bool,
    wait: bool,
    wait_seconds: float | None,
    bootstrap_server: str | None,
    topic: str | None,
) -> None:
    """Validate and publish consumer events (one from options, or JSONL with --file)."""
    if (file is None) == (consumer_uuid is None):
        raise click.UsageError("give either --consumer-uuid (one event) or --file (JSONL)")
    if file is not None and any((project_id, user_id, consumer_type, expected_generation, delete)):
        raise click.UsageError("event options cannot be combined with --file")
    if wait_seconds is not None and not wait:
        raise click.UsageError("--timeout needs --wait")
    settings = settings_from(ctx, bootstrap_servers=bootstrap_server, topic=topic)
    start_tracing(ctx, settings)
    output = _Output(as_json)
    if wait:
        items = (
            _one_item(
                settings,
                consumer_uuid,
                project_id,
                user_id,
                consumer_type,
                expected_generation,
                delete,
                producer_name,
            )
            if file is None
            else _line_items(settings, file, stop_on_error, producer_name)
        )
        ok = _run(_wait(settings, items, WaitOutput(as_json), wait_seconds))
    elif file is None:
        assert consumer_uuid is not None
        ok = _single(
            settings,
            output,
            consumer_uuid,
            project_id,
            user_id,
            consumer_type,
            expected_generation,
            delete,
            producer_name,
        )
    else:
        ok = _run(_stream(settings, output, file, stop_on_error, producer_name))
    if not ok:
        raise SystemExit(EXIT_PROBLEM)


def _single(
    settings: Settings,
    output: _Output,
    consumer_uuid: str,
    project_id: str | None,
    user_id: str | None,
    consumer_type: str | None,
    expected_generation: str | None,
    delete: bool,
    producer_name: str | None,
) -> bool:
    try:
        event = _option_event(
            settings,
            consumer_uuid,
            project_id,
            user_id,
            consumer_type,
            expected_generation,
            delete,
            producer_name,
        )
    except InvalidEvent as exc:
        # Every part of a single event is an option: one the contract refuses is a bad
        # argument (exit 2), like a malformed --consumer-uuid.
        output.invalid(None, exc)
        raise SystemExit(EXIT_USAGE) from None

    async def send() -> bool:
        async with EventProducer(settings) as producer:
            try:
                output.sent(None, await producer.send(event))
            except ProduceError as exc:
                output.failed(None, event.event_id, exc)
                return False
        return True

    return _run(send())


async def _wait(
    settings: Settings, items: AsyncIterator[Item], output: WaitOutput, wait: float | None
) -> bool:
    async with EventProducer(settings) as producer:
        return await send_and_report(producer, items, output, wait or settings.outcome_wait_seconds)


async def _one_item(
    settings: Settings,
    consumer_uuid: str | None,
    project_id: str | None,
    user_id: str | None,
    consumer_type: str | None,
    expected_generation: str | None,
    delete: bool,
    producer_name: str | None,
) -> AsyncIterator[Item]:
    assert consumer_uuid is not None
    try:
        event = _option_event(
            settings,
            consumer_uuid,
            project_id,
            user_id,
            consumer_type,
            expected_generation,
            delete,
            producer_name,
        )
    except InvalidEvent as exc:
        yield None, exc
    else:
        yield None, event


def _option_event(
    settings: Settings,
    consumer_uuid: str,
    project_id: str | None,
    user_id: str | None,
    consumer_type: str | None,
    expected_generation: str | None,
    delete: bool,
    producer_name: str | None,
) -> ConsumerEvent:
    """The single event the options describe (``InvalidEvent`` if the contract refuses it):
    one builder for the plain send and for ``--wait``."""
    return new_event(
        EventType.DELETE if delete else EventType.UPSERT,
        consumer_uuid,
        expected_generation=_precondition(expected_generation),
        project_id=project_id,
        user_id=user_id,
        consumer_type=consumer_type,
        producer=producer_name,
        max_bytes=settings.max_event_bytes,
    )


async def _line_items(
    settings: Settings, file: IO[bytes], stop_on_error: bool, producer_name: str | None
) -> AsyncIterator[Item]:
    async for number, line in _lines(file):
        if not line.strip():
            continue
        try:
            yield number, _line_event(line, settings.max_event_bytes, producer_name)
        except InvalidEvent as exc:
            yield number, exc
            if stop_on_error:
                return


def _precondition(text: str | None) -> Precondition:
    """``null`` -> None, an integer -> int; anything else is passed on as text so that the
    contract itself rejects it (schema_violation at $.expected_generation)."""
    if text is None:
        return UNCONDITIONAL
    if text.strip().lower() == "null":
        return None
    try:
        return int(text)
    except ValueError:
        return text  # type: ignore[return-value]


async def _stream(
    settings: Settings,
    output: _Output,
    file: IO[bytes],
    stop_on_error: bool,
    producer_name: str | None,
) -> bool:
    """Pipelined: up to ``WINDOW`` sends in flight; results print in line order (a bad
    line's error takes its place in that order)."""
    ok = True
    pending: deque[_Pending] = deque()
    async with EventProducer(settings) as producer:
        with _progress(file) as advance:
            async for number, line in _lines(file):
                advance(len(line))
                if not line.strip():
                    continue
                try:
                    event = _line_event(line, settings.max_event_bytes, producer_name)
                except InvalidEvent as exc:
                    pending.append((number, None, exc))
                    if stop_on_error:
                        break
                else:
                    try:
                        pending.append((number, event.event_id, await producer.submit(event)))
                    except InvalidEvent as exc:  # e.g. too large once re-encoded
                        pending.append((number, None, exc))
                        if stop_on_error:
                            break
                    except ProduceError as exc:  # the producer itself is unusable: stop
                        pending.append((number, None, exc))
                        break
                while len(pending) >= WINDOW:
                    ok = await _report(output, *pending.popleft()) and ok
            while pending:
                ok = await _report(output, *pending.popleft()) and ok
    return ok


def _line_event(line: bytes, max_bytes: int, producer_name: str | None) -> ConsumerEvent:
    """One line's boundary: whatever its bytes make the decoder raise is ``InvalidEvent``
    (reported with the line number and skipped), never a traceback."""
    try:
        return event_from_line(line.rstrip(b"\r\n"), max_bytes=max_bytes, producer=producer_name)
    except InvalidEvent:
        raise
    except Exception as exc:  # the boundary: any failure on a line's bytes is the line's
        raise undecodable(exc) from None


_Pending = tuple[int, str | None, "asyncio.Future[SendResult] | InvalidEvent | ProduceError"]


async def _report(
    output: _Output,
    number: int,
    event_id: str | None,
    outcome: asyncio.Future[SendResult] | InvalidEvent | ProduceError,
) -> bool:
    if isinstance(outcome, InvalidEvent):
        output.invalid(number, outcome)
        return False
    try:
        if isinstance(outcome, ProduceError):
            raise outcome
        output.sent(number, await outcome)
    except ProduceError as exc:
        output.failed(number, event_id, exc)
        return False
    return True


async def _lines(file: IO[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Numbered lines. A pipe (stdin) is read in a thread so that acknowledgements keep
    flowing while the writer on the other end is slow; a regular file is read directly."""
    if _file_size(file) > 0:
        for number, line in enumerate(file, start=1):
            yield number, line
        return
    number = 0
    while line := await asyncio.to_thread(file.readline):
        number += 1
        yield number, line


def _progress(file: IO[bytes]) -> Any:
    """A progress bar on stderr, only for a large regular file and a terminal."""
    size = _file_size(file)
    if size < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        return nullcontext(lambda n: None)
    return _ProgressBar(size)


def _file_size(file: IO[bytes]) -> int:
    try:
        return os.fstat(file.fileno()).st_size
    except (OSError, ValueError, AttributeError):  # stdin pipe, in-memory stream
        return 0


class _ProgressBar:
    def __init__(self, total: int) -> None:
        self._progress = Progress(
            TextColumn("producing"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("produce", total=total)

    def __enter__(self) -> Any:
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


class _Output:
    """Results on stdout (one line per event); problems as one line on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def sent(self, line: int | None, result: SendResult) -> None:
        if self.as_json:
            self._json(
                line,
                ok=True,
                event_id=result.event_id,
                topic=result.topic,
                partition=result.partition,
                offset=result.offset,
            )
        else:
            where = f"line {line}: " if line is not None else ""
            click.echo(
                f"{where}sent {result.event_id} to {result.topic} "
                f"partition {result.partition} offset {result.offset}"
            )

    def invalid(self, line: int | None, error: InvalidEvent) -> None:
        where = f"line {line}: " if line is not None else ""
        click.echo(f"error: {where}invalid event, {error.describe()} (not sent)", err=True)
        if self.as_json:
            self._json(
                line, ok=False, reason=error.reason.value, path=error.path, message=error.message
            )

    def failed(self, line: int | None, event_id: str | None, error: Exception) -> None:
        where = f"line {line}: " if line is not None else ""
        click.echo(f"error: {where}send failed: {error}", err=True)
        if self.as_json:
            self._json(line, ok=False, event_id=event_id, reason="send_failed", message=str(error))

    def _json(self, line: int | None, **fields: Any) -> None:
        record = {"line": line, **fields} if line is not None else fields
        click.echo(json.dumps(record, ensure_ascii=False))


def _run(coro: Any) -> bool:
    """Run the async part; an unreachable broker is a one-line error, not a traceback
    (exit 1), and so is configuration found unusable on the way, such as a reply topic
    that does not exist (exit 2, naming the setting)."""
    try:
        return bool(asyncio.run(coro))
    except BrokerUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        return False
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
