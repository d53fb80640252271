"""A partition's step retried while the infrastructure fails (``service.daemon.step_retry``),
through the narrow part of ``WorkerHost`` it uses: the settings, the metrics, and the
two reports (failed, recovered).

Its first attempt runs outside stamina (issue 22: the retry machinery cost every batch
something at light load); these tests hold what a failure does to what it was: reported
once, counted once per failed attempt, a backoff before *every* retry (the second
attempt included: the first failure is stamina's first attempt, not a free one), resumed
once nothing fails any more, and a bug or a cancellation passing through.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest
import tenacity
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.daemon.metrics import DaemonMetrics
from service.daemon.ports import WorkerConfig, WorkerHost
from service.daemon.retries import install_retry_hooks
from service.daemon.step_retry import StepRetry
from service.testing.polling import poll

TP = TopicPartition("events", 3)
#: The least stamina waits before a retry (its jitter only adds to it).
WAIT_INITIAL = 0.2


@dataclass
class ReportingHost:
    """What ``StepRetry`` reads of a ``WorkerHost``, recording the reports."""

    config: WorkerConfig = field(
        default_factory=lambda: WorkerConfig(
            batch_max_events=10,
            max_event_bytes=65_536,
            retry_wait_initial=WAIT_INITIAL,
            retry_wait_max=WAIT_INITIAL,
        )
    )
    metrics: DaemonMetrics = field(default_factory=DaemonMetrics)
    failed: list[tuple[str, str]] = field(default_factory=list)
    recovered: list[tuple[str, bool]] = field(default_factory=list)

    def infrastructure_failed(self, tp: TopicPartition, step: str, exc: BaseException) -> None:
        assert tp == TP
        self.failed.append((step, type(exc).__name__))

    def infrastructure_recovered(self, tp: TopicPartition, step: str, *, resumed: bool) -> None:
        assert tp == TP
        self.recovered.append((step, resumed))

    def retries(self, step: str) -> float | None:
        return self.metrics.registry.get_sample_value("consumergen_retries_total", {"step": step})


def _retry(host: ReportingHost) -> StepRetry:
    install_retry_hooks()
    return StepRetry(cast(WorkerHost, host), TP)


class Flaky:
    """Fails with each of ``failures`` in turn, then returns ``"done"``; notes when."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(time.monotonic())
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        return "done"


class DownUntil:
    """Fails on the infrastructure until ``up`` is set."""

    def __init__(self, up: asyncio.Event) -> None:
        self.up = up

    async def __call__(self) -> str:
        await asyncio.sleep(0)
        if not self.up.is_set():
            raise KafkaConnectionError("down")
        return "done"


async def test_a_step_that_works_runs_once_and_reports_nothing() -> None:
    host = ReportingHost()
    operation = Flaky()
    assert await _retry(host).run("database", operation) == "done"
    assert len(operation.calls) == 1
    assert host.failed == [] and host.recovered == []
    assert host.retries("database") == 0


async def test_an_infrastructure_failure_pauses_backs_off_before_each_retry_and_resumes() -> None:
    host = ReportingHost()
    operation = Flaky(KafkaConnectionError("down"), KafkaConnectionError("still down"))
    assert await _retry(host).run("outcomes", operation) == "done"
    assert len(operation.calls) == 3
    # reported once when it began to fail, resumed once when it worked
    assert host.failed == [("outcomes", "KafkaConnectionError")]
    assert host.recovered == [("outcomes", True)]
    # each failed attempt is a retry stamina scheduled, counted in the daemon's registry
    assert host.retries("outcomes") == 2
    # and each retry, the first one too, came after a backoff (the least stamina waits)
    gaps = [later - earlier for earlier, later in itertools.pairwise(operation.calls)]
    assert all(gap >= WAIT_INITIAL * 0.95 for gap in gaps), gaps


async def test_a_bug_propagates_at_once_and_pauses_nothing() -> None:
    host = ReportingHost()
    operation = Flaky(RuntimeError("ours"))
    with pytest.raises(RuntimeError, match="ours"):
        await _retry(host).run("database", operation)
    assert len(operation.calls) == 1
    assert host.failed == [] and host.recovered == []
    assert host.retries("database") == 0


async def test_a_bug_while_retrying_propagates_and_leaves_nothing_paused() -> None:
    host = ReportingHost()
    operation = Flaky(KafkaConnectionError("down"), RuntimeError("ours"))
    with pytest.raises(RuntimeError, match="ours"):
        await _retry(host).run("commit", operation)
    assert len(operation.calls) == 2
    assert host.failed == [("commit", "KafkaConnectionError")]
    assert host.recovered == [("commit", True)]
    assert host.retries("commit") == 1


async def test_a_step_cancelled_while_backing_off_is_given_up_not_resumed() -> None:
    host = ReportingHost()
    operation = Flaky(*[KafkaConnectionError("down")] * 100)
    task = asyncio.create_task(_retry(host).run("database", operation))
    await poll(lambda: bool(host.failed), 10, "the first failure reported", every=0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.failed == [("database", "KafkaConnectionError")]
    assert host.recovered == [("database", False)]


async def test_a_step_cancelled_in_its_first_attempt_reports_nothing() -> None:
    host = ReportingHost()
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(_retry(host).run("dead_letter", waits))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.failed == [] and host.recovered == []


async def test_the_partition_resumes_only_once_none_of_its_steps_fails() -> None:
    host = ReportingHost()
    retry = _retry(host)
    database_up = asyncio.Event()
    broker_up = asyncio.Event()

    database = asyncio.create_task(retry.run("database", DownUntil(database_up)))
    sink = asyncio.create_task(retry.run("outcomes", DownUntil(broker_up)))
    await poll(lambda: len(host.failed) == 2, 10, "both steps failing", every=0.01)
    database_up.set()
    assert await database == "done"
    assert host.recovered == []  # the sink still fails: the partition stays paused
    broker_up.set()
    assert await sink == "done"
    assert host.recovered == [("outcomes", True)]


@pytest.fixture
def scheduled() -> Iterator[list[RetryDetails]]:
    """Every retry stamina schedules meanwhile, with the wait it chose (``wait_for``)."""
    install_retry_hooks()
    previous = get_on_retry_hooks()
    seen: list[RetryDetails] = []
    set_on_retry_hooks([*previous, seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(previous)


async def test_the_backoff_starts_at_the_initial_wait_and_doubles_up_to_the_maximum(
    scheduled: list[RetryDetails], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waits are the configured ones (``CONSUMERGEN_INFRA_RETRY_WAIT_INITIAL_SECONDS``
    and ``..._MAX_SECONDS``), not stamina's defaults (0.1 s, 5 s): seen with stamina's
    random jitter at its least (0), the first wait is the initial one, each next one
    twice the last, never more than the maximum."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    host = ReportingHost(
        config=WorkerConfig(
            batch_max_events=10,
            max_event_bytes=65_536,
            retry_wait_initial=0.01,
            retry_wait_max=0.03,
        )
    )
    operation = Flaky(*[KafkaConnectionError("down")] * 4)
    assert await _retry(host).run("database", operation) == "done"
    assert [d.wait_for for d in scheduled] == pytest.approx([0.01, 0.02, 0.03, 0.03])
    assert [d.retry_num for d in scheduled] == [1, 2, 3, 4]


class _HourPerReading:
    """A monotonic clock that runs an hour each time it is read."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        self.now += 3600.0
        return self.now


async def test_a_step_is_retried_for_as_long_as_the_infrastructure_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No time limit (stamina's default gives up after 45 s): an outage of hours still
    ends in the step done, not in a failure that would stop the daemon.  The retries'
    clock (tenacity's, which stamina's time limit reads) runs an hour per reading here;
    the waits themselves are real and short."""
    monkeypatch.setattr(tenacity, "time", _HourPerReading())
    host = ReportingHost()
    host.config = WorkerConfig(
        batch_max_events=10, max_event_bytes=65_536, retry_wait_initial=0.001, retry_wait_max=0.001
    )
    operation = Flaky(*[KafkaConnectionError("down")] * 3)
    assert await _retry(host).run("database", operation) == "done"
    assert len(operation.calls) == 4
    assert host.recovered == [("database", True)]
