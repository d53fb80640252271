"""The daemon's start, fast (``service.daemon.startup``): what /readyz's ``last_error``
and the log say while the broker refuses the clients (down, wrong credentials, a TLS
certificate), that a client start is let finish when a stop comes, that readiness is
restored once the clients are up, the schema wait's retry lines and its end, and the
one direct connection that diagnoses a refused bootstrap.

The clients are the fakes (``service.testing.fake_kafka``'s consumer over a broker
that is down or up; a producer of this module that can be held in its start); the
diagnosis's connection is faked at aiokafka's ``create_conn`` (as
``tests/unit/test_tls_diagnose.py`` does) where a test needs a broker that answers or
refuses credentials, and is a real refused TCP connection otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from sqlalchemy.engine import make_url

from service.config import Settings
from service.daemon import startup
from service.daemon.health import Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.retries import install_retry_hooks
from service.daemon.startup import (
    check_schema_once,
    diagnose_connection,
    start_clients,
    wait_for_schema,
)
from service.kafka.clients import client_options
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.testing.fake_edges import fake_settings
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll
from tests.fake_conn import fake_create_conn
from tests.log_lines import named

WITHIN = 20.0
#: A retry bound with a third decimal (stamina's jitter of up to 1 s makes nearly every
#: wait the cap): the log's ``retry_in`` must be rounded to hundredths all the same.
WAIT_MAX = 0.015


class Producer:
    """The sinks' producer (``ProducerLifecycle``): starts at once, or, with ``gate``,
    only once the gate is set; counts what happened to each start."""

    def __init__(self, gate: asyncio.Event | None = None, fails: Exception | None = None):
        self.gate = gate
        self.fails = fails
        self.starts = 0
        self.started = 0
        self.cancelled = 0
        self.stopped = 0

    async def start(self) -> None:
        self.starts += 1
        if self.fails is not None:
            raise self.fails
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def stop_quietly(self) -> None:
        self.stopped += 1

    async def abandon(self) -> None:
        self.stopped += 1


class Clients:
    """What ``start_clients`` is given by the daemon: settings, the producer, the
    current consumer and its renewal, readiness, metrics and the stop event."""

    def __init__(self, settings: Settings, broker: FakeBroker, producer: Producer) -> None:
        self.settings = settings
        self.broker = broker
        self.producer = producer
        self.consumer = FakeConsumer(broker)
        self.readiness = Readiness()
        self.metrics = DaemonMetrics()
        self.stop = asyncio.Event()

    def renew(self) -> None:
        self.consumer = FakeConsumer(self.broker)

    def start(self, **when: str) -> asyncio.Task[None]:
        return asyncio.create_task(
            start_clients(
                self.settings,
                producer=self.producer,
                consumer=lambda: self.consumer,
                renew_consumer=self.renew,
                readiness=self.readiness,
                metrics=self.metrics,
                stop=self.stop,
                **when,
            )
        )

    def retries(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "consumergen_retries_total", {"step": "startup_broker"}
        )
        return value or 0.0


def settings_for(sqlite_url: str, **extra: Any) -> Settings:
    return fake_settings(
        sqlite_url,
        infra_retry_wait_initial_seconds=0.001,
        infra_retry_wait_max_seconds=WAIT_MAX,
        **extra,
    )


def assert_retry_fields(entries: list[dict[str, Any]]) -> None:
    """Each retry line numbers its attempt and says the wait stamina chose, in seconds
    rounded to hundredths, within the configured bound (give or take that rounding)."""
    assert [e["attempt"] for e in entries] == list(range(1, len(entries) + 1)), entries
    for entry in entries:
        wait = entry["retry_in"]
        assert isinstance(wait, float) and 0 <= wait <= WAIT_MAX + 0.005, entry
        assert wait == round(wait, 2), entry


def expired_certificate() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = 10  # X509_V_ERR_CERT_HAS_EXPIRED
    error.verify_message = "certificate has expired"
    return error


async def refused_twice(clients: Clients) -> None:
    await poll(lambda: clients.retries() >= 2, WITHIN, "two attempts refused")


# -- start_clients -------------------------------------------------------------------------
async def test_a_broker_down_at_start_is_logged_with_the_clients_error_then_ready(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Down: each retry line (the default ``when``: "at start") carries the error of the
    client that could not start (the consumer, at the bootstrap address), the cause the
    diagnosis found, the attempt and the wait; up: broker reachable, no error left."""
    install_retry_hooks()
    settings = settings_for(sqlite_url)
    broker = FakeBroker("events", 1)
    broker.go_down()
    clients = Clients(settings, broker, Producer())
    task = clients.start()
    await refused_twice(clients)
    assert clients.readiness.broker_reachable is False
    port = settings.bootstrap_servers.rpartition(":")[2]
    assert str(clients.readiness.last_error).startswith("broker: ")
    assert port in str(clients.readiness.last_error)
    broker.come_up()
    await asyncio.wait_for(task, WITHIN)
    assert clients.readiness.broker_reachable is True
    assert clients.readiness.last_error is None
    assert clients.consumer.started and clients.producer.started >= 1

    retried = named(caplog, "broker unavailable at start, retrying")
    assert len(retried) >= 2, caplog.text
    assert_retry_fields(retried)
    for entry in retried:
        assert entry["level"] == "warning"
        assert entry["error"] == (
            f"cannot connect the consumer to Kafka at {settings.bootstrap_servers}: "
            "KafkaConnectionError: fake broker is down"
        ), entry
        assert port in str(entry["cause"]), entry
    [started] = named(caplog, "broker reachable, starting")
    assert started["failed_attempts"] == len(retried)


async def test_the_retry_line_says_when_the_clients_were_being_started(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    install_retry_hooks()
    broker = FakeBroker("events", 1)
    broker.go_down()
    clients = Clients(settings_for(sqlite_url), broker, Producer())
    task = clients.start(when="after an outage")
    await refused_twice(clients)
    clients.stop.set()
    await asyncio.wait_for(task, WITHIN)
    assert named(caplog, "broker unavailable after an outage, retrying")
    assert not named(caplog, "broker unavailable at start, retrying")
    assert clients.readiness.broker_reachable is False  # stopped, never connected


async def test_a_refusal_the_diagnosis_cannot_explain_shows_the_clients_own_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The direct connection succeeds (the broker answers it, the consumer still could
    not start): /readyz shows the consumer's start error itself."""
    install_retry_hooks()
    fake_create_conn(monkeypatch, startup, None)
    settings = settings_for(sqlite_url)
    broker = FakeBroker("events", 1)
    broker.go_down()
    clients = Clients(settings, broker, Producer())
    task = clients.start()
    await refused_twice(clients)
    assert clients.readiness.last_error == (
        f"broker: cannot connect the consumer to Kafka at {settings.bootstrap_servers}: "
        "KafkaConnectionError: fake broker is down"
    )
    clients.stop.set()
    await asyncio.wait_for(task, WITHIN)
    retried = named(caplog, "broker unavailable at start, retrying")
    assert retried and all(e["cause"] is None for e in retried), retried


async def test_refused_credentials_are_one_error_line_naming_the_sasl_settings(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong credentials: /readyz says "authentication failed" with the mechanism and
    the broker's words; each attempt logs one error naming the three settings to check,
    with the address, protocol, mechanism and user, never the password."""
    install_retry_hooks()
    fake_create_conn(
        monkeypatch,
        startup,
        SaslAuthenticationFailed("Authentication failed:  invalid\n credentials"),
    )
    settings = settings_for(
        sqlite_url,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc-consumergen",
        sasl_password="hunter2-not-logged",
    )
    broker = FakeBroker("events", 1)
    broker.go_down()
    clients = Clients(settings, broker, Producer())
    task = clients.start()
    await refused_twice(clients)
    assert clients.readiness.last_error == (
        "broker: authentication failed (SCRAM-SHA-256): [Error 58] SaslAuthenticationFailed: "
        "Authentication failed: invalid credentials"
    )
    clients.stop.set()
    await asyncio.wait_for(task, WITHIN)

    refused = named(
        caplog,
        "Kafka refused the credentials; check CONSUMERGEN_SASL_USERNAME, "
        "CONSUMERGEN_SASL_PASSWORD and CONSUMERGEN_SASL_MECHANISM; retrying",
    )
    assert len(refused) >= 2, caplog.text
    assert_retry_fields(refused)
    for entry in refused:
        assert entry["level"] == "error"
        assert entry["bootstrap"] == settings.bootstrap_servers
        assert entry["security_protocol"] == "SASL_PLAINTEXT"
        assert entry["mechanism"] == "SCRAM-SHA-256"
        assert entry["username"] == "svc-consumergen"
    assert not named(caplog, "broker unavailable at start, retrying")
    assert "hunter2-not-logged" not in caplog.text


async def test_a_tls_handshake_failure_is_one_error_line_with_the_explanation(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_retry_hooks()
    fake_create_conn(monkeypatch, startup, expired_certificate())
    settings = settings_for(sqlite_url, security_protocol="SSL")
    broker = FakeBroker("events", 1)
    broker.go_down()
    clients = Clients(settings, broker, Producer())
    task = clients.start()
    await refused_twice(clients)
    explained = (
        f"TLS: the certificate of the broker at {settings.bootstrap_servers} has expired: "
        "renew it on the broker"
    )
    assert clients.readiness.last_error == f"broker: {explained}"
    clients.stop.set()
    await asyncio.wait_for(task, WITHIN)

    failed = named(caplog, f"Kafka TLS handshake failed; retrying. {explained}")
    assert len(failed) >= 2, caplog.text
    assert_retry_fields(failed)
    for entry in failed:
        assert entry["level"] == "error" and entry["security_protocol"] == "SSL", entry
    assert not named(caplog, "broker unavailable at start, retrying")


async def test_a_stop_during_a_client_start_lets_that_start_finish(sqlite_url: str) -> None:
    """A start in progress is never cancelled by a stop (a half-started aiokafka client
    is left behind so): the stop waits for it, and the clients are then up."""
    install_retry_hooks()
    gate = asyncio.Event()
    clients = Clients(settings_for(sqlite_url), FakeBroker("events", 1), Producer(gate))
    task = clients.start()
    await poll(lambda: clients.producer.starts == 1, WITHIN, "the producer starting")
    clients.stop.set()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done  # still waiting for the start in progress
    gate.set()
    await asyncio.wait_for(task, WITHIN)
    assert clients.producer.cancelled == 0 and clients.producer.started == 1
    assert clients.consumer.started
    assert clients.readiness.broker_reachable is True


async def test_a_start_error_other_than_the_broker_unavailable_is_not_retried(
    sqlite_url: str,
) -> None:
    """Only ``BrokerUnavailable`` is waited for (after it the failed clients are dropped
    and a fresh consumer made); an error the clients did not classify so propagates from
    the first attempt, not retried with the same failed client."""
    install_retry_hooks()
    error = KafkaConnectionError("raw, unwrapped")
    clients = Clients(settings_for(sqlite_url), FakeBroker("events", 1), Producer(fails=error))
    with pytest.raises(KafkaConnectionError, match="raw, unwrapped"):
        await asyncio.wait_for(clients.start(), WITHIN)
    assert clients.producer.starts == 1
    assert clients.retries() == 0


# -- diagnose_connection -------------------------------------------------------------------
def sasl_settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": "broker-1.example:9093,broker-2.example:9094",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "svc",
        "sasl_password": "pw",
        "request_timeout_seconds": 0.1,
    }
    return fake_settings("sqlite+aiosqlite:///unused.sqlite3", **{**values, **extra})


async def test_the_diagnosis_dials_the_first_bootstrap_server_with_the_clients_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_create_conn(monkeypatch, startup, None)
    settings = sasl_settings()
    assert await diagnose_connection(settings) is None  # it answered: nothing to say
    [(host, port, options, conn)] = calls
    expected = client_options(settings)
    expected.pop("bootstrap_servers")
    assert (host, port) == ("broker-1.example", 9093)
    assert options == expected and options["sasl_plain_username"] == "svc"
    assert conn.closed


async def test_the_diagnosis_of_refused_credentials_names_the_mechanism(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_create_conn(monkeypatch, startup, SaslAuthenticationFailed("bad  user\n or password"))
    assert await diagnose_connection(sasl_settings()) == (
        "authentication failed (PLAIN): [Error 58] SaslAuthenticationFailed: bad user or password"
    )


async def test_the_diagnosis_of_a_silent_broker_is_bounded_by_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_create_conn(monkeypatch, startup, "hang")
    said = await asyncio.wait_for(diagnose_connection(sasl_settings()), WITHIN)
    assert said == "TimeoutError"


async def test_the_diagnosis_says_a_connection_error_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_create_conn(monkeypatch, startup, KafkaConnectionError("no  route\n to broker-1"))
    said = await diagnose_connection(sasl_settings())
    assert said == "KafkaConnectionError: no route to broker-1"


def untrusted_certificate() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    error.verify_message = "unable to get local issuer certificate"
    return error


@pytest.mark.parametrize(
    ("error", "what"),
    [
        (expired_certificate, "has expired: renew it on the broker"),
        (
            untrusted_certificate,
            "is not signed by a CA in the system's default CAs (CONSUMERGEN_SSL_CAFILE is not set)",
        ),
    ],
    ids=["expired", "untrusted"],
)
async def test_the_diagnosis_explains_a_certificate_the_client_refused(
    monkeypatch: pytest.MonkeyPatch,
    error: Callable[[], ssl.SSLCertVerificationError],
    what: str,
) -> None:
    """The explanation names the first bootstrap server and the setting to look at."""
    fake_create_conn(monkeypatch, startup, error())
    said = await diagnose_connection(sasl_settings(security_protocol="SSL"))
    assert said == f"TLS: the certificate of the broker at broker-1.example:9093 {what}"


async def test_the_diagnosis_of_a_broker_that_is_down_says_the_refusal() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    settings = fake_settings(
        "sqlite+aiosqlite:///unused.sqlite3", bootstrap_servers=f"127.0.0.1:{closed}"
    )
    said = await diagnose_connection(settings)
    assert said is not None and f"('127.0.0.1', {closed})" in said and "\n" not in said


async def test_the_diagnosis_dials_a_bracketed_ipv6_bootstrap_server_without_its_brackets() -> None:
    """``[::1]:PORT`` is how a Kafka bootstrap list spells an IPv6 address: the diagnosis
    dials ``::1`` (and reports its refusal), not a host name ``[::1]`` that no resolver
    knows."""
    with socket.socket(socket.AF_INET6) as sock:  # a port nothing listens on
        sock.bind(("::1", 0))
        closed = int(sock.getsockname()[1])
    settings = fake_settings(
        "sqlite+aiosqlite:///unused.sqlite3", bootstrap_servers=f"[::1]:{closed}"
    )
    said = await diagnose_connection(settings)
    assert said is not None and f"('::1', {closed}" in said, said


# -- wait_for_schema -----------------------------------------------------------------------
def closed_postgres_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    return f"postgresql+asyncpg://nobody@127.0.0.1:{closed}/none"


async def test_the_schema_wait_logs_each_retry_with_the_error_and_a_bounded_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_retry_hooks()
    settings = fake_settings(
        closed_postgres_url(),
        infra_retry_wait_initial_seconds=0.001,
        infra_retry_wait_max_seconds=WAIT_MAX,
    )
    engine = create_engine(settings)
    readiness, metrics, stop = Readiness(), DaemonMetrics(), asyncio.Event()

    def retries() -> float:
        value = metrics.registry.get_sample_value(
            "consumergen_retries_total", {"step": "startup_database"}
        )
        return value or 0.0

    try:
        task = asyncio.create_task(
            wait_for_schema(settings, engine, readiness=readiness, metrics=metrics, stop=stop)
        )
        await poll(lambda: retries() >= 2, WITHIN, "two schema checks retried")
        stop.set()
        await asyncio.wait_for(task, WITHIN)
    finally:
        await engine.dispose()
    assert readiness.database_reachable is False
    assert str(readiness.last_error).startswith("database: ")
    retried = named(caplog, "database unavailable at start, retrying")
    assert len(retried) >= 2, caplog.text
    assert_retry_fields(retried)
    for entry in retried:
        assert entry["level"] == "warning"
        assert f"database: {entry['error']}" == readiness.last_error, entry
        assert "Error" in str(entry["error"]).partition(":")[0], entry
    assert not named(caplog, "database reachable, starting")  # it never was


async def test_the_schema_wait_marks_the_database_reachable_once_it_answers(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After the first look found the database unreachable (``check_schema_once``), a
    check that succeeds makes it reachable again for /readyz."""
    settings = fake_settings(sqlite_url)
    await upgrade(settings)
    engine = create_engine(settings)
    readiness = Readiness(database_reachable=False, last_error="database: was down")
    try:
        await asyncio.wait_for(
            wait_for_schema(
                settings,
                engine,
                readiness=readiness,
                metrics=DaemonMetrics(),
                stop=asyncio.Event(),
            ),
            WITHIN,
        )
    finally:
        await engine.dispose()
    assert readiness.database_reachable is True
    assert not named(caplog, "database reachable, starting")  # no failed attempt here


class GatedRelay:
    """A TCP relay to the database that holds every connection until ``gate`` is set:
    a database that is slow to answer, so that a check is in progress for as long as
    the test wants."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self.gate = asyncio.Event()
        self.waiting = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> GatedRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.waiting += 1
        await self.gate.wait()
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()


async def test_a_stop_during_a_schema_check_lets_that_check_finish(postgres_url: str) -> None:
    """A stop while the schema check waits for a slow database: the check is let finish
    (as the clients' start is), and having answered, the database is reachable."""
    settings = fake_settings(postgres_url, postgresql_allow_commit_loss_on_crash=True)
    await upgrade(settings)
    url = make_url(postgres_url)
    async with GatedRelay(url.host or "127.0.0.1", url.port or 5432) as relay:
        relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(False)
        settings = fake_settings(relayed, postgresql_allow_commit_loss_on_crash=True)
        engine = create_engine(settings)
        readiness, stop = Readiness(database_reachable=False), asyncio.Event()
        try:
            task = asyncio.create_task(
                wait_for_schema(
                    settings, engine, readiness=readiness, metrics=DaemonMetrics(), stop=stop
                )
            )
            await poll(lambda: relay.waiting >= 1, WITHIN, "the check connecting")
            stop.set()
            done, _ = await asyncio.wait({task}, timeout=0.2)
            assert not done  # still waiting for the check in progress
            relay.gate.set()
            await asyncio.wait_for(task, WITHIN)
        finally:
            await engine.dispose()
    assert readiness.database_reachable is True


# -- check_schema_once ---------------------------------------------------------------------
async def test_the_first_look_at_a_database_that_cannot_answer_says_why_and_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before anything listens: a database that refuses the connection is no reason to
    stop; the look says False, /readyz will say the database is unreachable and why, and
    the log says the daemon waits for it."""
    settings = fake_settings(closed_postgres_url())
    engine = create_engine(settings)
    readiness, metrics = Readiness(), DaemonMetrics()
    try:
        current = await check_schema_once(settings, engine, readiness=readiness, metrics=metrics)
    finally:
        await engine.dispose()
    assert current is False
    assert readiness.database_reachable is False
    [waiting] = named(caplog, "database unavailable at start, waiting for it")
    assert waiting["level"] == "warning"
    assert "Error" in str(waiting["error"]).partition(":")[0], waiting
    assert readiness.last_error == f"database: {waiting['error']}"
    failures = metrics.registry.get_sample_value(
        "consumergen_infrastructure_failures_total", {"kind": "database"}
    )
    assert failures == 1


async def test_the_first_look_at_a_current_schema_lets_the_start_go_on(sqlite_url: str) -> None:
    settings = fake_settings(sqlite_url)
    await upgrade(settings)
    engine = create_engine(settings)
    readiness = Readiness()
    try:
        current = await check_schema_once(
            settings, engine, readiness=readiness, metrics=DaemonMetrics()
        )
    finally:
        await engine.dispose()
    assert current is True
    assert readiness.database_reachable is True and readiness.last_error is None
