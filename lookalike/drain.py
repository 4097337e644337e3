"""A graceful stop of the live stack (``lookalike demo``): nothing it acknowledged is left in a
broker that is about to stop.

On the first SIGINT (Ctrl-C) or SIGTERM: writes are refused (503 with ``Retry-After``, and
``/readyz`` says draining) and those in progress answered; then the extract worker and the stock
follower store what the broker holds (a log line every couple of seconds with the counts);
then the server stops, the workers, and last the broker. Searches are served throughout.
Ctrl-C again stops at once (a repeated SIGTERM does not: ``make`` forwards the one it gets);
what the broker still held is then produced again from the outbox at the next start
(``store/outbox.py``), so even then nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from api.deps import IngestGate
from lookalike.stack import BackgroundLoops

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first stop signal starts :func:`graceful_stop` on a thread (the
    server keeps serving meanwhile) instead of exiting at once; a SIGINT after it (Ctrl-C
    again) exits now."""

    def __init__(
        self, config: uvicorn.Config, gate: IngestGate | None, loops: BackgroundLoops, timeout_s: float
    ) -> None:
        super().__init__(config)
        self.gate, self.loops, self.timeout_s = gate, loops, timeout_s
        self.draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            super().handle_exit(sig, frame)
        elif self.draining is None:
            self.draining = threading.Thread(target=self._drain, name="graceful-stop", daemon=True)
            self.draining.start()
        elif sig == signal.SIGINT:  # Ctrl-C again (a SIGTERM repeated, as make forwards it, is not)
            log.warning(
                "stopping now: what the broker still holds is replayed from the outbox at the next start"
            )
            super().handle_exit(sig, frame)
        else:
            log.info("%s: already stopping gracefully (Ctrl-C to stop now)", signal.Signals(sig).name)

    def _drain(self) -> None:
        try:
            graceful_stop(self.gate, self.loops, self.timeout_s)
        finally:
            self.should_exit = True


def graceful_stop(gate: IngestGate | None, loops: BackgroundLoops, timeout_s: float) -> bool:
    """Refuse writes, answer those in progress, then let the workers store what the broker
    holds (at most ``timeout_s``). True when everything was stored."""
    started = time.monotonic()
    if gate is not None:
        log.info("stopping: writes now get 503; answering those in progress")
        left = gate.close(timeout_s)
        if left:
            log.warning("%d write(s) still in progress after %.0fs", left, timeout_s)
    totals = loops.metrics.totals
    stored_before = totals.images
    shown = [time.monotonic()]

    def progress() -> None:
        if time.monotonic() - shown[0] >= PROGRESS_EVERY_S:
            shown[0] = time.monotonic()
            lag = "?" if totals.lag is None else str(totals.lag)
            log.info(
                "draining: %d image(s) stored since the stop, consumer lag %s",
                totals.images - stored_before,
                lag,
            )

    log.info("draining: the workers store what the broker holds (Ctrl-C again to stop now)")
    remaining = max(0.0, timeout_s - (time.monotonic() - started))
    finished = loops.drain(remaining, progress)
    took, stored = time.monotonic() - started, totals.images - stored_before
    drained = finished and not loops.failed and not loops.stop.is_set()
    if drained:
        log.info("drained in %.1fs: %d image(s) stored since the stop", took, stored)
    elif loops.stop.is_set():  # Ctrl-C again: the workers finished their batches in flight only
        log.info("stopped at once after %.1fs, %d image(s) stored since the stop", took, stored)
    else:
        log.warning(
            "not drained after %.0fs: what is left is replayed from the outbox at the next start", took
        )
    return drained
