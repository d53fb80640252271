"""aiokafka's log storms, tamed (``service.daemon.log_limits``): a retriable coordinator
lookup failure (how every group starts on a fresh broker) is INFO, not a red ERROR; any
other error keeps its level; repeats are collapsed per window."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from service.daemon.log_limits import (
    COORDINATOR_LOGGER,
    LOOKUP_FAILED,
    _RepeatLimiter,
    _RetriableLookupIsInfo,
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


def test_the_filters_sit_on_aiokafkas_logger_and_its_coordinators_once_each() -> None:
    """However often installed: the repeat limit on ``aiokafka`` and on the coordinator's
    logger (a logger's filters see only its own records), the lookup demotion on the
    coordinator's alone; nothing on the root logger (the service's own lines)."""
    limit_library_repeats()
    limit_library_repeats()

    def kinds(name: str | None) -> list[str]:
        return sorted(type(f).__name__ for f in logging.getLogger(name).filters)

    assert kinds("aiokafka") == ["_RepeatLimiter"]
    assert kinds(COORDINATOR_LOGGER) == ["_RepeatLimiter", "_RetriableLookupIsInfo"]
    assert not any(k in ("_RepeatLimiter", "_RetriableLookupIsInfo") for k in kinds(None))


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, (), None)


def test_a_repeat_window_lets_one_line_through_then_says_how_many_it_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = {"now": 1000.0}
    monkeypatch.setattr("service.daemon.log_limits.time.monotonic", lambda: clock["now"])
    limiter = _RepeatLimiter()
    assert limiter.window == 5.0
    first = _record("Unable to connect")
    assert limiter.filter(first) and first.msg == "Unable to connect"
    for _ in range(6):
        clock["now"] += 0.5
        assert not limiter.filter(_record("Unable to connect"))
    assert limiter.filter(_record("another template"))  # its own window
    clock["now"] = 1004.99  # still the first line's window
    assert not limiter.filter(_record("Unable to connect"))
    clock["now"] = 1005.0
    after = _record("Unable to connect")
    assert limiter.filter(after) and after.msg == "Unable to connect [7 similar lines held back]"
    clock["now"] = 1010.0  # nothing held in that window: the line as it is
    again = _record("Unable to connect")
    assert limiter.filter(again) and again.msg == "Unable to connect"


def test_only_the_lookup_template_is_demoted(
    coordinator_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """Another line carrying a retriable error keeps its level; the lookup template
    without its error argument keeps its level (and breaks nothing)."""
    coordinator_log.error("Heartbeat failed: %s", CoordinatorNotAvailableError())
    coordinator_log.error(LOOKUP_FAILED)
    levels = [r.levelno for r in caplog.records if r.name == COORDINATOR_LOGGER]
    assert levels == [logging.ERROR, logging.ERROR]


def test_a_demoted_lookup_failure_is_dropped_where_info_is_not_wanted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Demoted to INFO on a coordinator logger set to WARNING: dropped, as an INFO line of
    that logger would be (the root logger's level does not decide)."""
    limit_library_repeats()
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.WARNING, COORDINATOR_LOGGER)
    logger = logging.getLogger(COORDINATOR_LOGGER)
    for installed in logger.filters:
        if isinstance(installed, _RepeatLimiter):
            installed._last.clear()
    logger.error(LOOKUP_FAILED, CoordinatorNotAvailableError())
    assert [r for r in caplog.records if r.name == COORDINATOR_LOGGER] == []


@pytest.fixture
def fresh_library_loggers() -> Iterator[None]:
    """The two chatty loggers with none of this module's filters, whatever an earlier
    test (or the process that forked this one) installed; put back as found after."""
    names = ("aiokafka", COORDINATOR_LOGGER)
    saved = {name: list(logging.getLogger(name).filters) for name in names}
    levels = {logger: logger.level for logger in (*map(logging.getLogger, names), logging.root)}
    for name in names:
        for installed in saved[name]:
            if isinstance(installed, (_RepeatLimiter, _RetriableLookupIsInfo)):
                logging.getLogger(name).removeFilter(installed)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).filters[:] = saved[name]
        for logger, level in levels.items():
            logger.setLevel(level)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def kept_on(name: str) -> Iterator[_Kept]:
    """What a handler on ``name`` itself receives (no level of its own to hide a line)."""
    handler = _Kept()
    logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger(name).removeHandler(handler)


def test_installed_on_clean_loggers_a_storm_on_aiokafkas_logger_is_one_line(
    fresh_library_loggers: None,
) -> None:
    """Installed from scratch: the same failure logged twenty times on ``aiokafka`` and
    on the coordinator's logger reaches a handler once each (a storm, not a column)."""
    limit_library_repeats()
    for name in ("aiokafka", COORDINATOR_LOGGER):
        logging.getLogger(name).setLevel(logging.DEBUG)
        with kept_on(name) as kept:
            for _ in range(20):
                logging.getLogger(name).error("Unable connect to node with id %s", 1)
        assert [r.getMessage() for r in kept.records] == ["Unable connect to node with id 1"]


def test_installed_on_clean_loggers_the_lookup_failure_is_demoted(
    fresh_library_loggers: None,
) -> None:
    limit_library_repeats()
    logger = logging.getLogger(COORDINATOR_LOGGER)
    logger.setLevel(logging.DEBUG)
    with kept_on(COORDINATOR_LOGGER) as kept:
        logger.error(LOOKUP_FAILED, CoordinatorNotAvailableError())
    assert [(r.levelno, r.levelname) for r in kept.records] == [(logging.INFO, "INFO")]


@pytest.mark.parametrize(
    ("coordinator", "root", "shown"),
    [(logging.WARNING, logging.DEBUG, False), (logging.INFO, logging.WARNING, True)],
)
def test_the_coordinator_loggers_own_level_decides_whether_a_demoted_line_shows(
    fresh_library_loggers: None, coordinator: int, root: int, shown: bool
) -> None:
    """Demoted to INFO, the line is shown exactly when the coordinator's logger would
    show an INFO line: quieted to WARNING it is dropped even under a chatty root; set to
    INFO it shows even under a quiet root."""
    limit_library_repeats()
    logging.getLogger(COORDINATOR_LOGGER).setLevel(coordinator)
    logging.getLogger().setLevel(root)
    with kept_on(COORDINATOR_LOGGER) as kept:
        logging.getLogger(COORDINATOR_LOGGER).error(LOOKUP_FAILED, CoordinatorNotAvailableError())
    assert [r.levelno for r in kept.records] == ([logging.INFO] if shown else [])
