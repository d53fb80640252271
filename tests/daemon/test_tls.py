"""TLS for real: one embedded broker for this module with a TLS listener, a mutual-TLS
listener (``ssl.client.auth=required``), a SASL_SSL listener with SCRAM, and two
listeners presenting bad certificates (expired; for another host name).  Certificates
are made at test time (``tests/support/certs.py``).

Over each good listener, ``topics create``, the producer API, ``consumergen produce``,
the daemon and ``consumergen replay`` do their work and the database equals the
independent model.  Against each bad certificate (a CA the client does not trust, an
expired one, the wrong host name, and a mutual-TLS broker given no client certificate
or one from a CA it does not trust) the daemon logs one error line per attempt naming
the setting to look at, retries with backoff (counted over a window), is not ready, and
exits cleanly on SIGTERM; the wrong CA, mended under the running daemon, lets it start by itself;
``topics create`` says the same in one ``error:`` line and exits 1; no PEM block, key
line, key password or SCRAM password reaches the daemon's logs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.config import Settings, load_settings
from service.embedded.kafka import KafkaBroker
from service.embedded.listeners import TlsListener
from service.producer import EventProducer
from service.store.migrate import upgrade
from service.testing.daemon import (
    Topics,
    assert_matches_model,
    process_env,
    running_daemon,
)
from service.testing.daemon_process import DaemonProcess
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import read_all, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.daemon.test_broker_restart import create_topics
from tests.replay.helpers import Cli
from tests.support.certs import CertificateSet, make_certificates
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka]

SCRAM_USER = "tls-alice"
SCRAM_PASSWORD = "scram-Over-tls-pw-1618"
#: What must never be in a log: PEM armour (any key or certificate block).
PEM_MARKERS = ("-----BEGIN", "PRIVATE KEY")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_broker(
    certs: CertificateSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBroker]:
    """One broker for the module (a broker start costs ~20 s on this machine)."""
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka-tls"),
        scram_users={SCRAM_USER: SCRAM_PASSWORD},
        tls_listeners={
            "TLS": TlsListener(certs.broker.bundle),
            "MTLS": TlsListener(certs.broker.bundle, truststore=certs.ca, client_auth="required"),
            "SASLTLS": TlsListener(certs.broker.bundle, sasl=True),
            "EXPIRED": TlsListener(certs.broker_expired.bundle),
            "WRONGHOST": TlsListener(certs.broker_wrong_host.bundle),
        },
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def security(mode: str, certs: CertificateSet) -> dict[str, Any]:
    """Client settings (by field name) for one of the broker's listeners."""
    if mode == "tls":
        return {"security_protocol": "SSL", "ssl_cafile": certs.ca}
    if mode == "mtls":
        # The password-protected client key: CONSUMERGEN_SSL_KEYFILE_PASSWORD is used too.
        return {
            "security_protocol": "SSL",
            "ssl_cafile": certs.ca,
            "ssl_certfile": certs.client_encrypted.cert,
            "ssl_keyfile": certs.client_encrypted.key,
            "ssl_keyfile_password": certs.client_key_password,
        }
    assert mode == "sasl_ssl"
    return {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": certs.ca,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": SCRAM_USER,
        "sasl_password": SCRAM_PASSWORD,
    }


LISTENER = {"tls": "TLS", "mtls": "MTLS", "sasl_ssl": "SASLTLS"}


def fresh_topics() -> Topics:
    tag = uuid.uuid4().hex[:10]
    return Topics(f"tls-events-{tag}", f"tls-dlq-{tag}", f"tls-out-{tag}", f"tls-group-{tag}")


def cli_env(settings: Settings) -> dict[str, str]:
    """The CLI's environment for ``settings``, security included."""
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CONSUMERGEN_DATABASE_URL": settings.database_url,
        "CONSUMERGEN_TOPIC": settings.topic,
        "CONSUMERGEN_DLQ_TOPIC": settings.dlq_topic,
        "CONSUMERGEN_OUTCOMES_TOPIC": settings.outcomes_topic or "",
        "CONSUMERGEN_TOPIC_PARTITIONS": "4",
        "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "15",
        "CONSUMERGEN_SECURITY_PROTOCOL": settings.security_protocol,
    }
    optional = {
        "CONSUMERGEN_SSL_CAFILE": settings.ssl_cafile,
        "CONSUMERGEN_SSL_CERTFILE": settings.ssl_certfile,
        "CONSUMERGEN_SSL_KEYFILE": settings.ssl_keyfile,
        "CONSUMERGEN_SASL_MECHANISM": settings.sasl_mechanism,
        "CONSUMERGEN_SASL_USERNAME": settings.sasl_username,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    for name, secret in (
        ("CONSUMERGEN_SSL_KEYFILE_PASSWORD", settings.ssl_keyfile_password),
        ("CONSUMERGEN_SASL_PASSWORD", settings.sasl_password),
    ):
        if secret is not None:
            env[name] = secret.get_secret_value()
    return env


async def topic_partitions(plain: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=plain)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        return len(described[0].get("partitions") or [])
    finally:
        await admin.close()


@pytest.mark.parametrize("mode", ["tls", "mtls", "sasl_ssl"])
async def test_every_tool_over_tls(
    mode: str, tls_broker: KafkaBroker, certs: CertificateSet, sqlite_url: str, tmp_path: Path
) -> None:
    plain = tls_broker.bootstrap_servers  # only to check from outside what was done
    topics = fresh_topics()
    settings = load_settings(
        bootstrap_servers=tls_broker.tls_bootstrap_servers(LISTENER[mode]),
        database_url=sqlite_url,
        topic=topics.events,
        dlq_topic=topics.dlq,
        outcomes_topic=topics.outcomes,
        group_id=topics.group,
        health_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.5,
        batch_max_events=50,
        **security(mode, certs),
    )
    cli = Cli(cli_env(settings))

    created = await cli("topics", "create")
    assert created.exit_code == 0, created.output
    assert await topic_partitions(plain, topics.events) == 4

    stream = mixed_stream(consumers=25, events=400, seed=len(mode) + 60)
    model = expected_state(stream)
    half = len(stream) // 2
    async with EventProducer(settings) as producer:
        results = await producer.send_many(stream[:half])
    assert all(item.ok for item in results), [i.error for i in results if not i.ok][:3]

    events_file = tmp_path / "events.jsonl"
    events_file.write_text("".join(json.dumps(doc) + "\n" for doc in stream[half:]))
    produced = await cli("produce", "--file", str(events_file))
    assert produced.exit_code == 0, produced.output

    async with running_daemon(settings):
        await wait_all_committed(plain, topics.group, topics.events, within=90)
    assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)
    # The daemon's own producer wrote over TLS too: an outcome record (keyed by event id)
    # for every event.
    outcomes = await read_all(plain, topics.outcomes)
    assert {r.key.decode() for r in outcomes if r.key} == {d["event_id"] for d in stream}

    for dry in (["--dry-run"], []):
        replayed = await cli.json("replay", "--from-beginning", *dry)
        assert replayed["read"] == len(stream)
        assert replayed["outcomes"]["applied"] == 0 and replayed["outcomes"]["failed"] == 0
        assert replayed["invalid"] == 0 and replayed["problems"] == 0
    assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)


BAD = {
    # case: (listener, client settings, what the error line must say).  The secrets a
    # daemon holds (a SCRAM password, a client key's password) are given where the
    # listener allows, so that the check below that they stay out of the logs means
    # something.
    "wrong_ca": ("SASLTLS", "sasl_other_ca", "is not signed by a CA in CONSUMERGEN_SSL_CAFILE="),
    "expired": ("EXPIRED", "client_certificate", "has expired: renew it on the broker"),
    "wrong_host": (
        "WRONGHOST",
        "client_certificate",
        "does not name the host 127.0.0.1 (from CONSUMERGEN_BOOTSTRAP_SERVERS",
    ),
    "mtls_without_client_certificate": ("MTLS", "ca_only", "set CONSUMERGEN_SSL_CERTFILE"),
    "mtls_client_certificate_refused": (
        "MTLS",
        "client_other_ca",
        "most likely refuses this client's certificate, CONSUMERGEN_SSL_CERTFILE=",
    ),
}


def bad_client(kind: str, certs: CertificateSet) -> dict[str, Any]:
    if kind == "sasl_other_ca":
        return {**security("sasl_ssl", certs), "ssl_cafile": certs.other_ca}
    if kind == "client_certificate":
        return security("mtls", certs)
    if kind == "client_other_ca":
        return {
            **security("tls", certs),
            "ssl_certfile": certs.client_other_ca.cert,
            "ssl_keyfile": certs.client_other_ca.key,
        }
    return security("tls", certs)


HANDSHAKE_ERROR = "Kafka TLS handshake failed; retrying."
WINDOW_SECONDS = 8.0


async def watch_bad_daemon(
    case: str, daemon: DaemonProcess, mend: Callable[[], None] | None = None
) -> str:
    """One bad case: the clear line, paced attempts over the window, not ready; then,
    with ``mend``, the fix is made under the running daemon and it must become ready by
    itself; a clean SIGTERM.  Returns a summary line for the test's output."""
    expected = BAD[case][2]

    def handshake_errors() -> list[dict[str, object]]:
        return [
            e for e in daemon.log_events() if str(e.get("event", "")).startswith(HANDSHAKE_ERROR)
        ]

    await poll(lambda: bool(handshake_errors()), 90, f"{case}: the TLS error logged")
    first = handshake_errors()[0]
    assert first["level"] == "error", first
    assert expected in str(first["event"]), (case, first["event"])
    lines_before = len(daemon.log_events())
    window_start = time.monotonic()
    while time.monotonic() - window_start < WINDOW_SECONDS:
        assert daemon.alive(), (case, daemon.tail())
        body = await asyncio.to_thread(daemon.readiness)
        if body is not None:
            assert not body["ready"] and not body["broker_ok"], (case, body)
        await asyncio.sleep(0.5)
    body = await asyncio.to_thread(daemon.readiness)
    assert body is not None and expected in str(body["last_error"]), (case, body)
    attempts = len(handshake_errors())
    lines_in_window = len(daemon.log_events()) - lines_before
    # Waits of 0.5-1, 1-2, 2-4, 2-4 s ...: at most 6 attempts fit in ~9 s; a hot loop
    # would make dozens.  aiokafka's own lines are held to one per template per 5 s.
    assert 2 <= attempts <= 6, f"{case}: {attempts} attempts"
    assert lines_in_window <= 8 * attempts, f"{case}: {lines_in_window} log lines in the window"
    if mend is not None:
        mend()
        await asyncio.to_thread(daemon.wait_ready, 90)
    daemon.kill(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 20) == 0, (case, daemon.tail())
    return f"{case}: {attempts} attempts, {lines_in_window} log lines in {WINDOW_SECONDS:g} s"


async def test_bad_certificates_are_one_clear_line_retried_with_backoff(
    tls_broker: KafkaBroker, certs: CertificateSet, tmp_path: Path
) -> None:
    """The four cases run side by side (each its own daemon process and database): they
    mostly wait, and one window for all keeps the module's time down."""
    daemons: dict[str, DaemonProcess] = {}
    envs: dict[str, dict[str, str]] = {}
    # The wrong CA is mended in place (the file the daemon names gets the right CA) to
    # show the daemon resumes without a restart; it needs real topics for that.
    trusted = tmp_path / "trusted-ca.pem"
    trusted.write_bytes(certs.other_ca.read_bytes())

    def mend_ca() -> None:
        trusted.write_bytes(certs.ca.read_bytes())

    for case, (listener, client, _) in BAD.items():
        url = f"sqlite+aiosqlite:///{tmp_path / f'{case}.sqlite3'}"
        await upgrade(load_settings(database_url=url))
        settings = bad_client(client, certs)
        topics = fresh_topics()
        if case == "wrong_ca":
            settings["ssl_cafile"] = trusted
            topics = await create_topics(tls_broker.bootstrap_servers)
        envs[case] = process_env(
            tls_broker.tls_bootstrap_servers(listener),
            url,
            topics,
            infra_retry_wait_initial_seconds=1.0,
            infra_retry_wait_max_seconds=4.0,
            request_timeout_seconds=5,
            **settings,
        )
        daemons[case] = DaemonProcess(envs[case], tmp_path, name=case)
    try:
        for daemon in daemons.values():
            daemon.start()
        summaries = await asyncio.gather(
            *(
                watch_bad_daemon(c, d, mend_ca if c == "wrong_ca" else None)
                for c, d in daemons.items()
            )
        )
        print("\n[tls] " + "\n[tls] ".join(summaries))
    finally:
        for daemon in daemons.values():
            daemon.stop()
            scan_daemon_logs(daemon)

    # The operator's tools say the same in one line and exit 1 (no retries: a person runs
    # them).  The wrong CA again, for the tool: the daemon's file is mended by now.
    envs["wrong_ca"]["CONSUMERGEN_SSL_CAFILE"] = str(certs.other_ca)
    for case, env in envs.items():
        result = await Cli(env)("topics", "create")
        assert result.exit_code == 1, (case, result.output)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and BAD[case][2] in lines[0], (case, result.stderr)

    keys = (
        certs.broker.key,
        certs.client.key,
        certs.client_encrypted.key,
        certs.client_other_ca.key,
    )
    key_lines = [line for key in keys for line in key.read_text().splitlines()[1:-1]]
    for case, daemon in daemons.items():
        output = daemon.all_logs()
        for marker in PEM_MARKERS:
            assert marker not in output, f"{marker!r} in the logs of {case}"
        assert not any(line in output for line in key_lines), f"key material in {case}'s logs"
        for secret in (SCRAM_PASSWORD, certs.client_key_password):
            assert secret not in output, f"a password leaked ({case})"
