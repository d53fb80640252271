"""SASL/SCRAM against a broker listener that requires it: the right credentials work end
to end (SCRAM-SHA-256 and -512); a wrong password is reported clearly and retried with
backoff, never in a hot loop; no password ever reaches the logs."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded.kafka import KafkaBroker
from service.store.migrate import upgrade
from service.testing.daemon import assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.daemon.test_broker_restart import create_topics
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

PASSWORD = "s3cret-Scram-pw-4711"
WRONG = "not-the-pw-0815-xyz"


@pytest.fixture
def scram_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    own = KafkaBroker(tmp_path / "kafka", scram_users={"alice": PASSWORD})
    own.start()
    try:
        yield own
    finally:
        own.stop()


async def test_scram_credentials(
    scram_broker: KafkaBroker, sqlite_url: str, tmp_path: Path
) -> None:
    plain = scram_broker.bootstrap_servers  # for the test's own admin and producer
    topics = await create_topics(plain)
    stream = mixed_stream(consumers=40, events=1200, seed=51)
    model = expected_state(stream)
    await upgrade(daemon_settings(plain, sqlite_url, topics))

    def env(mechanism: str, password: str, **extra: object) -> dict[str, str]:
        return process_env(
            scram_broker.sasl_bootstrap_servers,
            sqlite_url,
            topics,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_username="alice",
            sasl_password=password,
            **extra,
        )

    daemons: list[DaemonProcess] = []
    try:
        # Right credentials, both SCRAM mechanisms, one after the other in one group.
        for mechanism, chunk in (("SCRAM-SHA-256", stream[:600]), ("SCRAM-SHA-512", stream[600:])):
            await produce_docs(plain, topics.events, chunk)
            daemon = DaemonProcess(env(mechanism, PASSWORD), tmp_path, name=mechanism.lower())
            daemons.append(daemon)
            daemon.start()
            await asyncio.to_thread(daemon.wait_ready, 60)
            await wait_all_committed(plain, topics.group, topics.events, within=60)
            daemon.kill(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
        assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)

        # A wrong password: a clear error, not ready, and a paced retry.
        wrong = DaemonProcess(
            env(
                "SCRAM-SHA-256",
                WRONG,
                infra_retry_wait_initial_seconds=1.0,
                infra_retry_wait_max_seconds=4.0,
            ),
            tmp_path,
            name="wrong-password",
        )
        daemons.append(wrong)
        wrong.start()

        def refused() -> bool:
            return any(
                str(e.get("event", "")).startswith("Kafka refused the credentials")
                for e in wrong.log_events()
            )

        await poll(refused, 30, "the credentials error logged")
        window_start = time.monotonic()
        while time.monotonic() - window_start < 8:
            assert wrong.alive(), wrong.tail()
            body = wrong.readiness()
            assert body is not None and not body["ready"] and not body["broker_ok"], body
            assert "authentication failed" in str(body["last_error"]), body
            await asyncio.sleep(0.5)
        attempts = sum(
            1
            for e in wrong.log_events()
            if str(e.get("event", "")).startswith("Kafka refused the credentials")
        )
        # Waits of 0.5-1, 1-2, 2-4, 2-4 s ...: at most 6 attempts fit in ~9 s; a hot loop
        # (an attempt takes ~0.3 s) would make 25 or more.
        assert 2 <= attempts <= 6, f"{attempts} connection attempts"
        began = time.monotonic()
        wrong.kill(signal.SIGTERM)
        assert await asyncio.to_thread(wrong.wait, 15) == 0, wrong.tail()
        print(
            f"\n[sasl] {attempts} attempts with a wrong password; stopped in "
            f"{time.monotonic() - began:.2f}s"
        )
    finally:
        for daemon in daemons:
            daemon.stop()
            scan_daemon_logs(daemon)
    for daemon in daemons:
        output = daemon.all_logs()
        assert PASSWORD not in output and WRONG not in output, f"a password leaked ({daemon.name})"
