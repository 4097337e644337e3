"""The embedded broker never outlives the process that started it, however that one ends."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from tests.integration.kafka_helpers import wait_until

pytestmark = pytest.mark.integration

PARENT = """
import time
from messaging.broker import EmbeddedBroker
broker = EmbeddedBroker().start()
print(broker.port, flush=True)
time.sleep(600)
"""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_parent_killed_with_sigkill_takes_its_broker_along() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        assert _listening(port)
        parent.send_signal(signal.SIGKILL)  # no handler, no finally, no atexit runs
        parent.wait(10)
        wait_until(lambda: not _listening(port), 30, "the orphaned broker to stop listening")
    finally:
        if parent.poll() is None:
            parent.kill()
