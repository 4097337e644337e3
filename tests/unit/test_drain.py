"""The demo's graceful stop (lookalike/drain.py): the first signal closes the write gate and
lets the workers drain, a repeated SIGTERM (make forwards the one it gets) changes nothing,
Ctrl-C again stops at once; once drained, the server is told to exit."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from api.deps import IngestGate
from lookalike.drain import DrainingServer
from lookalike.stack import BackgroundLoops


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def server_over(loops: BackgroundLoops, gate: IngestGate) -> DrainingServer:
    return DrainingServer(uvicorn.Config(FastAPI()), gate, loops, timeout_s=60)


def test_a_drain_closes_the_gate_then_tells_the_server_to_exit_once_the_loops_are_done() -> None:
    loops, gate = BackgroundLoops(), IngestGate()
    drained = threading.Event()

    def worker(stop: threading.Event, finish: threading.Event) -> None:
        finish.wait(60)  # serves until asked to drain
        drained.set()

    loops.start("worker", worker)
    server = server_over(loops, gate)
    server.handle_exit(signal.SIGTERM, None)
    wait_for(lambda: server.should_exit, "the server to be told to exit")
    assert gate.closed and drained.is_set() and not loops.stop.is_set() and not server.force_exit


def test_a_repeated_sigterm_keeps_draining_and_ctrl_c_again_stops_at_once() -> None:
    loops, gate = BackgroundLoops(), IngestGate()
    loops.start("slow", lambda stop, finish: stop.wait(60))  # would drain only when stopped
    server = server_over(loops, gate)
    server.handle_exit(signal.SIGTERM, None)
    wait_for(lambda: gate.closed, "the gate to close")
    server.handle_exit(signal.SIGTERM, None)  # make forwards the SIGTERM it got
    assert not server.should_exit
    server.handle_exit(signal.SIGINT, None)  # Ctrl-C again
    assert server.should_exit
    loops.close(timeout_s=10)
    assert not loops.running()
