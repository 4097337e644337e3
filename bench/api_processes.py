"""Memory of ``lookalike serve`` with one process and with several (``LOOKALIKE_API_PROCESSES``),
over one SQLite store of synthetic float16 vectors, printed as JSON.

Each run starts the real server (``python -m lookalike.cli serve``), sends searches by vector on
new connections until every worker has answered a few (each answer scans every vector, so all
of the matrix is paged in), then reads the proportional set size (``Pss`` of
``/proc/<pid>/smaps_rollup``: a page shared by k processes counts 1/k in each) of the server's
processes, and of the snapshot's mapping in each worker. ``pss_over_one`` is the sum over every
process of a run (the workers and their supervisor) over the one-process server's; the target
is at most 1.2. Followers are off (a stream follower's own memory is small; a scan follower
would scan the store every interval).

    python -m bench.api_processes [--rows 200000] [--dim 256] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench import search_data

MODEL = "vgg16_fc7"  # a known model name; its dimension is the store's
ANSWERS_PER_WORKER = 3


def _seed(folder: Path, rows: int, dim: int) -> str:
    from search import vector_io
    from store import open_store

    data = search_data.make(rows, dim)
    np.save(folder / "v.npy", data.vectors)
    with (folder / "ids.csv").open("w") as f:
        f.write("listing_id,image_id\n")
        for lid, iid in zip(data.listing_ids, data.image_ids, strict=True):
            f.write(f"{_uuid(lid)},{_uuid(iid)}\n")
    url = f"sqlite:///{folder / 'bench.db'}"
    store = open_store(url)
    store.apply_schema()
    vector_io.import_features(store, folder / "v.npy", folder / "ids.csv", MODEL, "float16")
    store.close()
    (folder / "v.npy").unlink()
    return url


def _uuid(packed: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(packed).ljust(16, b"\0"))  # numpy drops trailing NUL bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(folder: Path, url: str, dim: int, processes: int) -> dict[str, Any]:
    port = _free_port()
    env = {
        **os.environ,
        "LOOKALIKE_DATA_DIR": str(folder),
        "LOOKALIKE_STORE": url,
        "LOOKALIKE_MODEL_NAME": MODEL,
        "LOOKALIKE_KAFKA_BOOTSTRAP": "",
        "LOOKALIKE_API_PROCESSES": str(processes),
        "LOOKALIKE_API_PORT": str(port),
        "LOOKALIKE_SEARCH_FOLLOW": "off",
        "LOOKALIKE_SEARCH_THREADS": "1",
    }
    log = (folder / f"serve-{processes}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve"], env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc)
        ready_s = time.perf_counter() - started
        _warm(base, dim, processes)
        return {"processes": processes, "ready_s": round(ready_s, 1), **_memory(proc.pid, folder)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def _warm(base: str, dim: int, processes: int) -> None:
    """Searches on new connections until every worker answered ``ANSWERS_PER_WORKER``."""
    rng = np.random.default_rng(0)
    answered: dict[str, int] = {}
    while len(answered) < processes or min(answered.values()) < ANSWERS_PER_WORKER:
        with httpx.Client(base_url=base, timeout=60) as client:
            who = client.get("/readyz").json()["checks"].get("process", "one")
            query = rng.standard_normal(dim)
            r = client.post("/v1/search", json={"vector": (query / np.linalg.norm(query)).tolist()})
            r.raise_for_status()
            answered[who] = answered.get(who, 0) + 1


def _memory(pid: int, folder: Path) -> dict[str, Any]:
    parent = psutil.Process(pid)
    workers = parent.children(recursive=True)
    serving = workers or [parent]
    rows = [{"pid": p.pid, "role": "worker" if workers else "server", **_rollup(p.pid)} for p in serving]
    if workers:
        rows.append({"pid": pid, "role": "supervisor", **_rollup(pid)})
    mapped = [_mapped_pss(p.pid, folder) for p in workers]
    return {
        "pss_bytes": sum(r["pss_bytes"] for r in rows),
        "pss_workers_bytes": sum(r["pss_bytes"] for r in rows if r["role"] != "supervisor"),
        "snapshot_pss_per_worker_bytes": mapped,
        "per_process": rows,
    }


def _rollup(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {
        "pss_bytes": fields["Pss"],
        "rss_bytes": fields["Rss"],
        "private_bytes": fields["Private_Clean"] + fields["Private_Dirty"],
        "shared_bytes": fields["Shared_Clean"] + fields["Shared_Dirty"],
    }


def _mapped_pss(pid: int, folder: Path) -> int:
    """Pss of the snapshot files this process maps."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                inside = "/snapshots/" in parts[-1] and parts[-1].startswith(str(folder))
            elif inside and parts[0] == "Pss:":
                total += int(parts[1]) * 1024
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-processes-") as tmp:
        folder = Path(tmp).resolve()
        url = _seed(folder, args.rows, args.dim)
        one = _run(folder, url, args.dim, 1)
        many = _run(folder, url, args.dim, args.processes)
    vectors = args.rows * args.dim * 2
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "vectors_bytes": vectors,
        "one_process": one,
        "several_processes": many,
        "pss_over_one": round(many["pss_bytes"] / one["pss_bytes"], 3),
        "workers_pss_over_one": round(many["pss_workers_bytes"] / one["pss_bytes"], 3),
        "target_met": many["pss_bytes"] <= 1.2 * one["pss_bytes"],
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
