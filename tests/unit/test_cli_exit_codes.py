"""The exit-code policy of every verb, as a table: bad input → code + one-line message.

0 done; 1 the work found a problem (here: infrastructure that cannot be reached); 2 a
bad argument or configuration, whichever verb it is (``service/cli/_common.py``).  The
message is the last line on stderr and names what is wrong.  No case needs a broker:
each is refused before anything is connected (the point of the policy).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.embedded.process import free_port

UUID = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
NOWHERE = f"127.0.0.1:{free_port()}"

#: (arguments, extra environment, exit code, what the last stderr line says)
CASES: list[tuple[list[str], dict[str, str], int, str]] = [
    (["show", "nope"], {}, 2, "not a UUID: 'nope'"),
    (["produce", "--consumer-uuid", "nope"], {}, 2, "not a UUID: 'nope'"),
    (["produce", "--consumer-uuid", "123"], {}, 2, "not a UUID: '123'"),
    (["pseudonym", "nope"], {}, 2, "not a UUID: 'nope'"),
    (
        ["produce", "--consumer-uuid", UUID, "--expected-generation", "abc"],
        {},
        2,
        "invalid event, schema_violation at $.expected_generation",
    ),
    (["show", UUID, "--events", "-1"], {}, 2, "--events"),
    (["show", UUID, "--database-url", "mysql+aiomysql://h/db"], {}, 2, "'mysql' database"),
    (["db", "upgrade", "--database-url", "sqlite:///x.db"], {}, 2, "CONSUMERGEN_DATABASE_URL"),
    (["db", "current", "--database-url", "nope"], {}, 2, "CONSUMERGEN_DATABASE_URL"),
    (["db", "prune", "--older-than", "5x"], {}, 2, "--older-than"),
    (["replay"], {}, 2, "say where to start"),
    (["replay", "--from-offset", "zero"], {}, 2, "expected PARTITION:OFFSET"),
    (["replay", "--from-beginning", "--republish"], {}, 2, "--republish only applies to --dlq"),
    (["verify", "--with-topic"], {}, 2, "--with-topic only applies with --archive"),
    (["archive", "--from-offset", "zero", "-o", "-"], {}, 2, "expected PARTITION:OFFSET"),
    (["topics", "create", "--partitions", "0"], {}, 2, "--partitions"),
    (["run", "--health-port", "70000"], {}, 2, "--health-port"),
    (["nosuchverb"], {}, 2, "No such command 'nosuchverb'"),
    (["show", UUID], {"CONSUMERGEN_TYPO": "1"}, 2, "unknown setting CONSUMERGEN_TYPO"),
    (
        ["produce", "--consumer-uuid", UUID],
        {"CONSUMERGEN_BATCH_MAX_EVENTS": "0"},
        2,
        "CONSUMERGEN_BATCH_MAX_EVENTS",
    ),
    (["db", "upgrade"], {"CONSUMERGEN_LOG_LEVEL": "LOUD"}, 2, "CONSUMERGEN_LOG_LEVEL"),
    # Tracing (README, Tracing): an exporter or protocol the SDK cannot serve.
    (["produce", "--consumer-uuid", UUID], {"OTEL_TRACES_EXPORTER": "zipkin"}, 2, "zipkin"),
    (
        ["run"],
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        2,
        "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'",
    ),
    (
        ["replay", "--from-beginning", "--dry-run"],
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        2,
        "OTEL_TRACES_EXPORTER='jaeger'",
    ),
    # Infrastructure that is not there is the work's problem, not the caller's: exit 1.
    (
        ["show", UUID, "--database-url", f"postgresql+asyncpg://u:secret@{NOWHERE}/db"],
        {},
        1,
        "consumergen show:",
    ),
]


@pytest.mark.parametrize(("args", "env", "code", "message"), CASES, ids=lambda v: repr(v)[:60])
def test_exit_code_policy(
    args: list[str], env: dict[str, str], code: int, message: str, tmp_path: Path
) -> None:
    database = tmp_path / "live.sqlite3"
    environment = {"CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{database}", **env}
    result = CliRunner().invoke(cli, args, env=environment, catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines, "an error must say something"
    assert message in lines[-1], result.stderr
    assert "secret" not in result.stderr  # a password never appears in an error
    assert "Traceback" not in result.stderr
    assert not database.exists()  # nothing was created by a refused command
