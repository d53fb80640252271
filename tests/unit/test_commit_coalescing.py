"""Commit coalescing without a broker (``service/daemon/commits.py``): offsets of several
partitions that finish while a commit is in flight go out together in the next one;
"the group moved on" is harmless (False), anything else reaches every waiter."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    RebalanceInProgressError,
)

from service.daemon.commits import CommitCoalescer
from service.failures import is_infrastructure
from tests.log_lines import logged

TP = [TopicPartition("events", n) for n in range(4)]


class FakeConsumer:
    """``commit`` that holds each request until ``release`` (or raises ``error``)."""

    def __init__(self) -> None:
        self.requests: list[dict[TopicPartition, int]] = []
        self.gate = asyncio.Event()
        self.error: BaseException | None = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.requests.append(dict(offsets))
        await self.gate.wait()
        if self.error is not None:
            raise self.error


async def _settle() -> None:
    """Let every ready task run (the committer, the workers)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_offsets_finished_meanwhile_are_merged_into_one_commit() -> None:
    consumer = FakeConsumer()
    seen: list[tuple[TopicPartition, int]] = []
    commits = CommitCoalescer(
        consumer.commit, timeout=5, committed=lambda tp, offset: seen.append((tp, offset))
    )
    first = asyncio.create_task(commits.commit(TP[0], 10))
    await _settle()
    assert consumer.requests == [{TP[0]: 10}]  # in flight, held
    later = [
        asyncio.create_task(commits.commit(tp, offset))
        for tp, offset in ((TP[1], 5), (TP[2], 7), (TP[3], 1))
    ]
    await _settle()
    assert len(consumer.requests) == 1  # they wait for the one in flight
    consumer.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), 5) == [True] * 4
    assert consumer.requests == [{TP[0]: 10}, {TP[1]: 5, TP[2]: 7, TP[3]: 1}]
    assert commits.requests == 2
    assert sorted(seen) == sorted([(TP[0], 10), (TP[1], 5), (TP[2], 7), (TP[3], 1)])


@pytest.mark.parametrize(
    "error",
    [
        CommitFailedError("group rebalanced"),
        IllegalStateError("Partition events-1 is not assigned"),
        RebalanceInProgressError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_commit_refused_by_a_rebalance_is_harmless(error: BaseException) -> None:
    consumer = FakeConsumer()
    consumer.error = error
    consumer.gate.set()
    seen: list[tuple[TopicPartition, int]] = []
    commits = CommitCoalescer(
        consumer.commit, timeout=5, committed=lambda tp, offset: seen.append((tp, offset))
    )
    results = await asyncio.gather(commits.commit(TP[0], 3), commits.commit(TP[1], 4))
    assert results == [False, False]
    assert seen == []  # not committed: nothing to report as such


async def test_a_commit_refused_by_a_rebalance_says_so_in_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator who sees events read twice after a rebalance finds why: one INFO line
    for the refused request (not one per partition in it), with the broker's words."""
    consumer = FakeConsumer()
    consumer.error = CommitFailedError("the group has already rebalanced")
    consumer.gate.set()
    commits = CommitCoalescer(consumer.commit, timeout=5)
    assert await asyncio.gather(commits.commit(TP[0], 3), commits.commit(TP[1], 4)) == [
        False,
        False,
    ]
    refused = [e for e in logged(caplog) if "rebalance" in str(e.get("event"))]
    assert [(e["level"], e["event"], e["error"]) for e in refused] == [
        (
            "info",
            "commit refused by a rebalance; redelivery is absorbed",
            str(consumer.error),
        )
    ]
    assert "the group has already rebalanced" in refused[0]["error"]


async def test_any_other_commit_error_reaches_every_waiter() -> None:
    consumer = FakeConsumer()
    consumer.error = KafkaConnectionError("broker gone")
    consumer.gate.set()
    commits = CommitCoalescer(consumer.commit, timeout=5)
    results = await asyncio.gather(
        commits.commit(TP[0], 3), commits.commit(TP[1], 4), return_exceptions=True
    )
    assert [type(r) for r in results] == [KafkaConnectionError, KafkaConnectionError]
    assert all(isinstance(r, BaseException) and is_infrastructure(r) for r in results)


async def test_a_commit_that_hangs_is_bounded_and_an_infrastructure_failure() -> None:
    consumer = FakeConsumer()  # never released
    commits = CommitCoalescer(consumer.commit, timeout=0.05)
    with pytest.raises(TimeoutError) as raised:
        await commits.commit(TP[0], 1)
    assert is_infrastructure(raised.value)


async def test_a_waiter_cancelled_meanwhile_does_not_break_the_others() -> None:
    consumer = FakeConsumer()
    commits = CommitCoalescer(consumer.commit, timeout=5)
    first = asyncio.create_task(commits.commit(TP[0], 1))
    await _settle()
    gone = asyncio.create_task(commits.commit(TP[1], 2))
    kept = asyncio.create_task(commits.commit(TP[2], 3))
    await _settle()
    gone.cancel()  # its partition was revoked
    consumer.gate.set()
    assert await first is True
    assert await kept is True
    assert gone.cancelled()


async def test_the_commit_in_flight_runs_as_the_committer_task() -> None:
    """A task dump (asyncio's debug output, a hung shutdown's report) names the commit
    in flight "committer", so an operator can tell a stuck offset commit from a stuck
    fetch or batch."""
    consumer = FakeConsumer()
    commits = CommitCoalescer(consumer.commit, timeout=5, committed=lambda tp, offset: None)
    waiter = asyncio.create_task(commits.commit(TP[0], 3))
    await _settle()
    assert consumer.requests == [{TP[0]: 3}]
    names = {task.get_name() for task in asyncio.all_tasks() if not task.done()}
    assert "committer" in names
    consumer.gate.set()
    assert await asyncio.wait_for(waiter, 5) is True
