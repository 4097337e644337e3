"""``lookalike serve`` with several processes (``LOOKALIKE_API_PROCESSES`` > 1): a pre-fork
server whose processes share one copy of the vectors.

The parent imports what the API needs and has a child write the snapshot of the served
model's vectors (``search/snapshot.py``): the parent itself runs no threads and no parallel
kernels, so each fork is clean. It then forks the workers. Each maps the snapshot read-only
(the page cache holds the vectors once, whatever the count), starts its own follower (new
images and removals reach every process), its own ingest producer, and serves on its own
socket bound to the one port with ``SO_REUSEPORT`` (the kernel spreads connections over them).

The workers run in their own process group: the parent forwards SIGINT and SIGTERM to them
once, and each stops as ``lookalike serve`` does. A worker that exits on its own stops the
others, and the parent exits with its status (the orchestrator restarts the whole).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import NoReturn

from config.settings import Settings

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
BACKLOG = 2048


def serve_processes(settings: Settings) -> int:
    """Serve the API from ``settings.api.processes`` processes until a signal; the exit status."""
    import uvicorn  # noqa: F401  # imported before the forks: its pages are shared

    from api.app import create_app  # noqa: F401
    from lookalike import stack  # noqa: F401

    snapshot = _snapshot_in_child(settings)
    host, processes = settings.api.host, settings.api.processes
    holder = _reuseport_socket(host, settings.api.port)  # holds the port (no listen: gets no connections)
    port = holder.getsockname()[1]
    gc.freeze()  # the imported objects stay out of the workers' collections: their pages stay shared
    workers = {_fork(_worker, settings, snapshot, i, processes, port): i for i in range(processes)}
    log.info("serving on http://%s:%d with %d processes over %s", host, port, processes, snapshot)
    status = _supervise(workers)
    holder.close()
    return status


def _snapshot_in_child(settings: Settings) -> Path:
    """The snapshot's path, written by a child process (its scan and sort run threads)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _exit_after(lambda: os.write(write, str(_write_snapshot(settings)).encode()))
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        written = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not written:
        raise RuntimeError("writing the index snapshot failed (see the log above)")
    return Path(written)


def _write_snapshot(settings: Settings) -> Path:
    from lookalike.stack import configured_store, model_name
    from search.snapshot import snapshots_folder, write_snapshot
    from store.models import stored_model

    if settings.search.tier != "memory":
        raise ValueError("LOOKALIKE_API_PROCESSES > 1 serves the memory tier (LOOKALIKE_SEARCH_TIER=memory)")
    store = configured_store(settings)
    try:
        info = stored_model(store, model_name(settings))
        folder = snapshots_folder(settings.core.data_dir, settings.core.store_url())
        return write_snapshot(store, info, settings.search.dtype, folder)
    finally:
        store.close()


def _worker(settings: Settings, snapshot: Path, i: int, processes: int, port: int) -> None:
    import uvicorn

    from api.app import create_app
    from lookalike import stack

    process = f"worker {i + 1} of {processes}, pid {os.getpid()}"
    app = create_app(
        settings.api,
        lambda: stack.api_components(settings, snapshot=snapshot, process=process, score_arrivals=i == 0),
    )
    sock = _reuseport_socket(settings.api.host, port)
    sock.listen(BACKLOG)
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[sock])


def _fork(target: object, *args: object) -> int:
    pid = os.fork()
    if pid:
        return pid
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    with contextlib.suppress(
        OSError, AttributeError
    ):  # best effort (Linux): stop with the parent, even a killed one
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _exit_after(lambda: target(*args))  # type: ignore[operator]


def _exit_after(run: object) -> NoReturn:
    """Run, then leave this forked process without the parent's exit handlers."""
    code = 0
    try:
        run()  # type: ignore[operator]
    except BaseException:
        log.exception("process %d failed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _supervise(workers: dict[int, int]) -> int:
    """Wait for the workers; forward SIGINT/SIGTERM once; stop all when one exits on its own."""
    stopping: list[int] = []
    status = 0

    def stop(signum: int, _: FrameType | None = None) -> None:
        if not stopping:
            stopping.append(signum)
            for pid in workers:
                _signal(pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    while workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        i = workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(wait_status)
        if i is not None and not stopping:
            log.error("worker %d (pid %d) exited with %d: stopping the others", i + 1, pid, code)
            status = code or 1
            stop(signal.SIGTERM)
    return status


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock
