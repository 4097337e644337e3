"""The supervisor of ``lookalike serve``'s workers (``lookalike/processes.py``): the serving
process execs this once its workers are forked, so it keeps its pid (and stays their parent)
but none of the memory it loaded for them. It imports nothing beyond the standard library.

It forwards SIGINT and SIGTERM to the workers once, and waits for them; a worker that exits on
its own stops the others, and the supervisor exits with that worker's status.

    python -m lookalike.supervise PID:N ...   (what lookalike serve execs)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from types import FrameType

log = logging.getLogger("lookalike.supervise")


def supervise(workers: dict[int, int]) -> int:
    """Wait for the workers (pid -> number); the exit status."""
    stopping: list[int] = []
    status = 0

    def stop(signum: int, _: FrameType | None = None) -> None:
        if not stopping:
            stopping.append(signum)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    while workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        number = workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(wait_status)
        if number is not None and not stopping:
            log.error("worker %d (pid %d) exited with %d: stopping the others", number + 1, pid, code)
            status = code or 1
            stop(signal.SIGTERM)
    return status


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = {int(pid): int(number) for pid, number in (arg.split(":") for arg in argv)}
    return supervise(workers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
