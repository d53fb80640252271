"""The dashboard and alert rules under deploy/ name only what a live daemon serves.

A real daemon (the session's broker, SQLite) applies a small stream with a bad record in
it; its /metrics, scraped over HTTP, must carry every metric name that
deploy/grafana/consumergen-dashboard.json and deploy/prometheus/consumergen-alerts.yaml
select, and the new series must have counted what happened (the end-to-end latency of
each valid event, the batches in progress back at 0, ready at 1).
"""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.kafka_io import produce_docs, produce_raw, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import mixed_stream
from tests.support.promql import dashboard_expressions, metric_names, rule_expressions

pytestmark = [pytest.mark.kafka]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_every_metric_the_dashboard_and_alerts_use_is_served(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics
) -> None:
    stream = mixed_stream(consumers=5, events=40, seed=15)
    await produce_docs(kafka_bootstrap, topics.events, stream)
    await produce_raw(kafka_bootstrap, topics.events, [(None, b"not json")])
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, probe_interval_seconds=0.2)
    async with running_daemon(settings, health=True) as daemon:
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        await poll(lambda: daemon.readiness.verdict()[0], 30, "the daemon ready")
        assert daemon.health is not None
        port = daemon.health.port

        async def counted_everything() -> bool:
            samples = await asyncio.to_thread(_scrape, port)
            return samples.get(("consumergen_event_latency_seconds_count", ()), 0) == len(stream)

        await poll(counted_everything, 10, "every valid event's latency observed")
        samples = await asyncio.to_thread(_scrape, port)

    served = {name for name, _ in samples}
    used = {
        name
        for expr in (*dashboard_expressions(), *rule_expressions())
        for name in metric_names(expr)
    }
    assert used, "no metric names found in deploy/"
    assert used <= served, f"named in deploy/ but not served: {sorted(used - served)}"

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("consumergen_ready") == 1
    assert value("consumergen_batches_in_progress") == 0
    assert value("consumergen_dead_lettered_total", reason="not_json") == 1
    # Pre-set: present at 0 although nothing of the kind happened.
    assert value("consumergen_dead_lettered_total", reason="too_large") == 0
    assert value("consumergen_infrastructure_failures_total", kind="database") == 0
    [build] = [labels for name, labels in samples if name == "consumergen_build_info"]
    assert dict(build)["version"]
    assert not any(name.endswith("_created") for name in served)
