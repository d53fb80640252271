"""service/failures.classify: each failure class is recognised positively."""

from __future__ import annotations

import sqlite3
import ssl

import pytest
from aiokafka import errors as kafka_errors
from sqlalchemy import exc as sa_exc

from service.failures import FailureClass, classify, infrastructure_kind, is_infrastructure
from service.store.errors import TransientDatabaseError


def _operational(message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


def _verify_failed(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    error.verify_code = code
    return error


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}]")
    error.reason = reason
    return error


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


CASES: list[tuple[str, BaseException, FailureClass, str | None]] = [
    # The broker cannot serve now.
    (
        "kafka connection",
        kafka_errors.KafkaConnectionError("refused"),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "request timed out",
        kafka_errors.RequestTimedOutError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "leader moved",
        kafka_errors.NotLeaderForPartitionError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "no coordinator",
        kafka_errors.CoordinatorNotAvailableError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "not coordinator",
        kafka_errors.NotCoordinatorForGroupError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("node not ready", kafka_errors.NodeNotReadyError(), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "too few replicas",
        kafka_errors.NotEnoughReplicasError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("client timeout", kafka_errors.KafkaTimeoutError(), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "producer sequence",
        kafka_errors.OutOfOrderSequenceNumber(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("connection reset", ConnectionResetError(), FailureClass.INFRASTRUCTURE, "broker"),
    ("timeout", TimeoutError(), FailureClass.INFRASTRUCTURE, "broker"),
    # A certificate the TLS handshake refused: mended outside the process, then resumed.
    ("tls untrusted", _verify_failed(20), FailureClass.INFRASTRUCTURE, "broker"),
    ("tls expired", _verify_failed(10), FailureClass.INFRASTRUCTURE, "broker"),
    ("tls wrong host", _verify_failed(64), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "tls client cert refused",
        _ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    # The database cannot serve now.
    ("transient db", TransientDatabaseError("down"), FailureClass.INFRASTRUCTURE, "database"),
    ("sqlite locked", _operational("database is locked"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg connection failure", _PgError("08006"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg serialization", _PgError("40001"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg shutting down", _PgError("57P01"), FailureClass.INFRASTRUCTURE, "database"),
    # The broker refuses the record itself.
    ("message too large", kafka_errors.MessageSizeTooLargeError(), FailureClass.RECORD, None),
    ("record too large", kafka_errors.RecordTooLargeError(), FailureClass.RECORD, None),
    # Ours.
    ("value error", ValueError("x"), FailureClass.BUG, None),
    ("key error", KeyError("x"), FailureClass.BUG, None),
    (
        "integrity error",
        sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
        FailureClass.BUG,
        None,
    ),
    ("pg unique violation", _PgError("23505"), FailureClass.BUG, None),
    ("sqlite syntax", _operational('near "SELEC": syntax error'), FailureClass.BUG, None),
    ("topic authorization", kafka_errors.TopicAuthorizationFailedError(), FailureClass.BUG, None),
    ("illegal state", kafka_errors.IllegalStateError("x"), FailureClass.BUG, None),
    ("assertion", AssertionError("invariant"), FailureClass.BUG, None),
]


@pytest.mark.parametrize(
    ("error", "expected", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(error: BaseException, expected: FailureClass, kind: str | None) -> None:
    assert classify(error) is expected
    assert infrastructure_kind(error) == kind
    assert is_infrastructure(error) is (expected is FailureClass.INFRASTRUCTURE)
