"""aiokafka's log storms, tamed (``service.daemon.log_limits``): a retriable coordinator
lookup failure (how every group starts on a fresh broker) is INFO, not a red ERROR; any
other error keeps its level; repeats are collapsed per window."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from service.daemon.log_limits import (
    COORDINATOR_LOGGER,
    LOOKUP_FAILED,
    _RepeatLimiter,
    limit_library_repeats,
)


@pytest.fixture
def coordinator_log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    limit_library_repeats()
    caplog.set_level(logging.INFO, COORDINATOR_LOGGER)
    logger = logging.getLogger(COORDINATOR_LOGGER)
    for installed in logger.filters:  # each test starts a fresh repeat window
        if isinstance(installed, _RepeatLimiter):
            installed._last.clear()
    return logger


def test_retriable_lookup_failure_is_info(
    coordinator_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator_log.error(LOOKUP_FAILED, CoordinatorNotAvailableError())
    [record] = [r for r in caplog.records if r.name == COORDINATOR_LOGGER]
    assert (record.levelno, record.levelname) == (logging.INFO, "INFO")


def test_fatal_lookup_failure_stays_error(
    coordinator_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator_log.error(LOOKUP_FAILED, GroupAuthorizationFailedError("g"))
    [record] = [r for r in caplog.records if r.name == COORDINATOR_LOGGER]
    assert record.levelno == logging.ERROR


def test_repeats_collapse_within_the_window(
    coordinator_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(7):
        coordinator_log.error("Heartbeat send request failed: %s. Will retry.", "x")
    assert len([r for r in caplog.records if r.name == COORDINATOR_LOGGER]) == 1
