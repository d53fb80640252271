"""The rules of the failure classes beyond the table of ``test_failures.py``: what an error
that no rule recognises is (a bug, never "transient"), how a wrapped error's cause
decides, which component the service's own "not now" errors name, and the one-line
description of a database error that is all the logs ever carry of it."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from service.domain.errors import InfrastructureUnavailable
from service.failures import (
    FailureClass,
    broker_unavailable,
    classify,
    database_unavailable,
    infrastructure_kind,
    is_infrastructure,
    record_refused,
)
from service.kafka.clients import BrokerUnavailable
from service.sinks.base import SinkUnavailable
from service.store.errors import describe, is_transient


class _Unknown(Exception):
    """An error no rule knows: no cause, no ``orig``, not a driver's."""


class _PoolGone(sa_exc.InterfaceError):
    """An ``InterfaceError`` whose class name no dialect lists."""


def _dbapi(orig: BaseException) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", {}, orig)  # type: ignore[arg-type]


# --- is_transient -------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [_Unknown("x"), ValueError("x"), _dbapi(ValueError("x")), _dbapi(_Unknown("x"))],
    ids=["unknown", "value", "dbapi-value", "dbapi-unknown"],
)
def test_an_error_no_rule_recognises_is_not_transient(error: BaseException) -> None:
    assert is_transient(error) is False
    assert database_unavailable(error) is False
    assert infrastructure_kind(error) is None and not is_infrastructure(error)
    assert classify(error) is FailureClass.BUG


def test_a_driver_error_whose_original_is_a_connection_failure_is_transient() -> None:
    for orig in (ConnectionResetError(), BrokenPipeError(), OSError("network down")):
        error = _dbapi(orig)
        assert error.__cause__ is None
        assert is_transient(error) is True
        assert infrastructure_kind(error) == "database"


def test_the_explicit_cause_decides_before_the_drivers_original() -> None:
    error = _dbapi(ValueError("orig"))
    error.__cause__ = ConnectionRefusedError()
    assert is_transient(error) is True


def test_every_interface_error_is_transient_even_one_no_dialect_names() -> None:
    error = _PoolGone("SELECT 1", {}, Exception("gone"))
    assert is_transient(error) is True


def test_a_connection_invalidated_only_counts_on_a_driver_error() -> None:
    assert is_transient(_dbapi(_Unknown("x"))) is False
    assert is_transient(sa_exc.DBAPIError("S", {}, _Unknown("x"), connection_invalidated=True))


# --- failures: whose fault ----------------------------------------------------------


def test_the_services_own_not_now_errors_name_what_is_unavailable() -> None:
    assert infrastructure_kind(SinkUnavailable("down", kind="webhook")) == "webhook"
    assert infrastructure_kind(SinkUnavailable("down")) == "sink"
    assert infrastructure_kind(BrokerUnavailable("no answer")) == "broker"
    odd = InfrastructureUnavailable("not now")
    odd.kind = 7  # type: ignore[attr-defined]  # not a name: the broker's by default
    assert infrastructure_kind(odd) == "broker"
    for error in (SinkUnavailable("x", kind="webhook"), BrokerUnavailable("x"), odd):
        assert classify(error) is FailureClass.INFRASTRUCTURE and is_infrastructure(error)


def test_the_record_and_the_broker_rules_are_exclusive() -> None:
    from aiokafka import errors as kafka_errors

    too_large = kafka_errors.MessageSizeTooLargeError()
    assert record_refused(too_large) and not broker_unavailable(too_large)
    refused = ConnectionRefusedError()
    assert broker_unavailable(refused) and not record_refused(refused)
    assert not broker_unavailable(_Unknown("x")) and not broker_unavailable(ValueError())


def test_a_database_failure_is_named_database_not_broker() -> None:
    locked = sa_exc.OperationalError("S", {}, sqlite3.OperationalError("database is locked"))
    assert not broker_unavailable(locked)
    assert infrastructure_kind(locked) == "database"


# --- describe -----------------------------------------------------------------------


def test_describe_gives_the_drivers_class_and_first_line_only() -> None:
    error = sa_exc.OperationalError(
        "UPDATE consumers SET x = ?", {"p": "secret"}, sqlite3.OperationalError("locked\nsecret")
    )
    assert describe(error) == "OperationalError: locked"
    assert describe(ValueError("\n  padded\nsecond")) == "ValueError: padded"
    assert describe(ValueError("")) == "ValueError: "
    assert describe(_dbapi(ValueError(""))) == "ValueError: "


def test_describe_is_at_most_300_characters() -> None:
    text = describe(ValueError("x" * 1000))
    assert len(text) == 300 and text == "ValueError: " + "x" * 288
