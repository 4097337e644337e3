"""``lookalike serve`` with several processes (``LOOKALIKE_API_PROCESSES`` > 1): a pre-fork
server whose processes share one copy of the vectors.

The parent imports what the API needs and has a child write the snapshot of the served
model's vectors (``search/snapshot.py``; none on the Spark engine, where the API holds no
vectors): the parent itself runs no threads and no parallel kernels, so each fork is clean.
It then forks the workers. Each maps the snapshot read-only (the page cache holds the vectors
once, whatever the count), starts its own follower (new images and removals reach every
process), its own ingest producer, and serves on its own socket bound to the one port with
``SO_REUSEPORT`` (the kernel spreads connections over them).

Once they are forked, the parent execs the supervisor (``lookalike/supervise.py``): same pid,
still their parent, without the memory it loaded for them. The workers run in their own
process group: the supervisor forwards SIGINT and SIGTERM to them once, and each stops as
``lookalike serve`` does. A worker that exits on its own stops the others, and the supervisor
exits with its status (the orchestrator restarts the whole); a killed supervisor takes the
workers with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NoReturn

from config.settings import Settings

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
BACKLOG = 2048


def serve_processes(settings: Settings) -> NoReturn:
    """Serve the API from ``settings.api.processes`` processes until a signal; this process
    then supervises them (``lookalike/supervise.py``) and exits with their status."""
    import uvicorn  # noqa: F401  # imported before the forks: its pages are shared

    from api.app import create_app  # noqa: F401
    from lookalike import stack  # noqa: F401

    # the Spark engine holds no vectors in the API (search/store_lookup.py): nothing to share
    snapshot = None if settings.search.engine == "spark" else _snapshot_in_child(settings)
    host, processes = settings.api.host, settings.api.processes
    sockets = _listening(host, settings.api.port, processes)
    gc.freeze()  # the imported objects stay out of the workers' collections: their pages stay shared
    workers = {
        _fork(partial(_worker, settings, snapshot, i, processes, sockets)): i for i in range(processes)
    }
    port = sockets[0].getsockname()[1]
    over = snapshot or "the Spark search service"
    log.info("serving on http://%s:%d with %d processes over %s", host, port, processes, over)
    for sock in sockets:
        sock.close()
    logging.shutdown()
    # this process becomes a small supervisor of its workers (same pid, still their parent):
    # the imports' pages it leaves are the workers' alone, shared among them
    os.execv(
        sys.executable,
        [sys.executable, "-m", "lookalike.supervise", *(f"{p}:{i}" for p, i in workers.items())],
    )


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


def _worker(
    settings: Settings, snapshot: Path | None, i: int, processes: int, sockets: list[socket.socket]
) -> None:
    import uvicorn

    from api.app import create_app
    from lookalike import stack

    for other in sockets[:i] + sockets[i + 1 :]:
        other.close()
    process = f"worker {i + 1} of {processes}, pid {os.getpid()}"
    app = create_app(
        settings.api,
        lambda: stack.api_components(settings, snapshot=snapshot, process=process, score_arrivals=i == 0),
    )
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[sockets[i]])


def _fork(run: Callable[[], object]) -> int:
    """A worker process running ``run``: its pid."""
    pid = os.fork()
    if pid:
        return pid
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    with contextlib.suppress(OSError, AttributeError):  # best effort (Linux): stop with the parent
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _exit_after(run)


def _exit_after(run: Callable[[], object]) -> NoReturn:
    """Run, then leave this forked process without the parent's exit handlers."""
    code = 0
    try:
        run()
    except BaseException:
        log.exception("process %d failed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _listening(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one port with SO_REUSEPORT, one per worker: the kernel
    spreads new connections over them (port 0: a free port, the same for all)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockets[0].getsockname() if sockets else address)
        sock.listen(BACKLOG)
        sockets.append(sock)
    return sockets
