"""`consumergen topics create`: create the events, dead-letter, outcomes and reply topics.

A separate, explicit step (brokers in production usually have automatic topic creation
off, and the partition count is a decision: it fixes which partition a consumer maps to).
"""

from __future__ import annotations

import asyncio

import click

from service.cli._common import EXIT_PROBLEM, settings_from
from service.kafka.clients import BrokerUnavailable
from service.kafka.topics import ensure_topics


@click.group("topics")
def command() -> None:
    """Manage the Kafka topics the service uses."""


@command.command("create")
@click.option("--partitions", type=click.IntRange(min=1), help="CONSUMERGEN_TOPIC_PARTITIONS.")
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    help="CONSUMERGEN_TOPIC_REPLICATION_FACTOR.",
)
@click.option("--bootstrap-server", help="Kafka host:port[,host:port].")
@click.pass_context
def create(
    ctx: click.Context,
    partitions: int | None,
    replication_factor: int | None,
    bootstrap_server: str | None,
) -> None:
    """Create the events, dead-letter, (if set) outcomes and reply topics; keep existing ones."""
    settings = settings_from(
        ctx,
        bootstrap_servers=bootstrap_server,
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
    )
    try:
        result = asyncio.run(ensure_topics(settings))
    except BrokerUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_PROBLEM) from None
    for topic, state in result.items():
        click.echo(f"{topic}: {state}")
