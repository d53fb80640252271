"""A real single-node Apache Kafka (KRaft) broker from Maven Central jars.

There is no container engine and no Kafka package on these machines, but there is
Java 17 and Maven.  ``ensure_jars`` resolves ``kafka_2.13`` and its run-time class
path (pinned in ``kafka-pom.xml``) once into a cache folder; ``KafkaBroker`` formats
KRaft storage for a combined broker+controller node and runs ``kafka.Kafka`` on
127.0.0.1 with a small heap.  The broker gets a parent-death signal, so it cannot
outlive the process that started it.

Run ``python -m service.embedded.kafka`` (or ``consumergen local kafka``) to start
one for yourself.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.embedded.listeners import (
    SCRAM_MECHANISMS,
    TlsListener,
    tls_listener_properties,
    validate_listener_name,
)
from service.embedded.process import (
    die_with_parent,
    free_port,
    port_open,
    stop_process,
    tail,
    wait_until,
)

#: Keep in step with ``kafka.version`` in kafka-pom.xml.
KAFKA_VERSION = "4.1.2"
_HERE = Path(__file__).parent
POM = _HERE / "kafka-pom.xml"
LOG4J_CONFIG = _HERE / "kafka-log4j2.properties"
_READY_LINE = "Kafka Server started"


def cache_root() -> Path:
    """Where downloads are kept between runs (``$XDG_CACHE_HOME/consumergen``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "consumergen"


def jars_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(quiet: bool = True) -> Path:
    """Resolve the broker's jars once; later calls return at once without Maven.

    A lock makes concurrent first calls safe, and the folder only appears complete
    (renamed into place) once Maven succeeded, so an interrupted download is retried.
    """
    target = jars_dir()
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka jars; install it")
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target.parent))
        command = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(
                f"mvn could not resolve Kafka {KAFKA_VERSION}:\n{result.stdout[-3000:]}"
                f"{result.stderr[-2000:]}"
            )
        (staging / ".complete").write_text(KAFKA_VERSION + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Java 17 or newer is needed to run the Kafka broker; none on PATH")
    return java


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaBroker:
    """One KRaft node (broker and controller in one JVM) on 127.0.0.1.

    ``data_dir`` keeps the log segments; an existing, formatted folder is reused,
    so a person's local broker keeps its topics across restarts.
    """

    data_dir: Path
    port: int = 0
    heap: str = "512m"
    extra_properties: dict[str, str] = field(default_factory=dict)
    #: SCRAM users (name -> password) for an extra SASL_PLAINTEXT listener on ``sasl_port``.
    scram_users: dict[str, str] = field(default_factory=dict)
    sasl_port: int = 0
    #: Extra TLS listeners by (upper-case) name: SSL, mutual TLS or SASL_SSL with the
    #: SCRAM users above (``service.embedded.listeners``); ports in ``tls_ports``.
    tls_listeners: dict[str, TlsListener] = field(default_factory=dict)
    tls_ports: dict[str, int] = field(default_factory=dict)
    controller_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            # Topics are created on purpose (consumergen topics create), never by a typo.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            # Single node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "-1",
        }
        if self.scram_users:
            props["listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["advertised.listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512"
            for mechanism in SCRAM_MECHANISMS:
                props[f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        for name, listener in self.tls_listeners.items():
            port = self.tls_ports[name]
            props["listeners"] += f",{name}://127.0.0.1:{port}"
            props["advertised.listeners"] += f",{name}://127.0.0.1:{port}"
            props["listener.security.protocol.map"] += f",{name}:{listener.protocol}"
            props.update(tls_listener_properties(name, port, listener))
        props.update(self.extra_properties)
        return props

    @property
    def sasl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def tls_bootstrap_servers(self, name: str) -> str:
        """host:port of the TLS listener ``name``."""
        return f"127.0.0.1:{self.tls_ports[name]}"

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        """Format (first time) and start the node; returns once it accepts clients."""
        if self.process is not None:
            raise RuntimeError("broker already started")
        libs = ensure_jars()
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        if self.scram_users:
            self.sasl_port = self.sasl_port or free_port()
        for name, listener in self.tls_listeners.items():
            validate_listener_name(name)
            if listener.sasl and not self.scram_users:
                raise ValueError(f"TLS listener {name} is SASL_SSL: give the broker scram_users")
            self.tls_ports[name] = self.tls_ports.get(name) or free_port()
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in self._properties().items()))
        classpath = f"{libs}/*"
        java = java_executable()
        jvm = [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            scram = [
                arg
                for name, password in self.scram_users.items()
                for mechanism in (m.upper() for m in SCRAM_MECHANISMS)
                for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
            ]
            formatted = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument with "=": a base64 id may start with "-", which the
                    # tool's parser would otherwise take for an option.
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(config),
                    *scram,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise RuntimeError(
                    f"formatting KRaft storage failed:\n{formatted.stdout}{formatted.stderr}"
                )
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGKILL),
                start_new_session=True,
            )
        finally:
            log.close()
        offset = 0

        def ready() -> bool:
            nonlocal offset
            return _READY_LINE in self.log_file.read_text(errors="replace") and port_open(self.port)

        wait_until(ready, self.process, timeout, "Kafka broker", self.log_file)
        self.started_in = time.monotonic() - began
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL if it takes longer than ``timeout``."""
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM, timeout)
            self.process = None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)


@contextmanager
def running_broker(data_dir: Path | None = None, **kwargs: object) -> Iterator[KafkaBroker]:
    """A broker for the duration of the block; a temporary ``data_dir`` is removed after."""
    owned = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="consumergen-kafka-")) if owned else data_dir
    assert folder is not None
    broker = KafkaBroker(folder, **kwargs)  # type: ignore[arg-type]
    try:
        yield broker.start()
    finally:
        broker.stop()
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Start a persistent local broker in the foreground until Ctrl-C or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a local single-node Kafka broker.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--data-dir", type=Path, default=Path(".local/kafka"))
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args()
    broker = KafkaBroker(args.data_dir.resolve(), port=args.port, heap=args.heap)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    broker.start()
    print(
        f"Kafka {KAFKA_VERSION} on {broker.bootstrap_servers} "
        f"(started in {broker.started_in:.1f}s, data in {args.data_dir}); Ctrl-C stops it",
        flush=True,
    )
    try:
        assert broker.process is not None
        broker.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
