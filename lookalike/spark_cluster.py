"""A real Spark standalone cluster on one machine, from the jars pyspark ships.

    python -m lookalike.spark_cluster [--workers 2] [--cores 1] [--memory 1g] [--logs DIR]

(``make spark-cluster``) starts ``org.apache.spark.deploy.master.Master`` and N
``org.apache.spark.deploy.worker.Worker`` through pyspark's own ``spark-class``, all on
127.0.0.1 with free ports, waits until every worker has registered, prints the master URL to put
in ``LOOKALIKE_SPARK_MASTER`` and runs until Ctrl-C. Each application then gets one executor JVM
per worker, as on a real cluster: tasks cross process boundaries, an executor can be lost and its
tasks rerun elsewhere. Nothing is downloaded. The tests start the same cluster
(:func:`start_cluster`).

The workers run the driver's Python (``PYSPARK_PYTHON``) and pass this checkout on
``PYTHONPATH`` to their executors, so code shipped to tasks imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyspark

from search.spark.session import ensure_java

ROOT = Path(__file__).resolve().parents[1]
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    return Path(pyspark.__file__).resolve().parent


def cluster_env(log_dir: Path) -> dict[str, str]:
    """The daemons' environment: pyspark as SPARK_HOME, loopback only, this checkout importable
    by the executors' Python workers (an executor inherits its worker's environment)."""
    ensure_java()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(log_dir),
        "SPARK_DAEMON_MEMORY": os.environ.get("SPARK_DAEMON_MEMORY", "256m"),
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYTHONPATH": path,
    }


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): a worker's executor JVMs and their Python."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Daemon:
    """One JVM started through spark-class, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[str]
    args: list[str]
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL the daemon and every process under it (its executors); the pids killed."""
        pids = [*descendants(self.pid), self.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        return pids

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Spark's shutdown hooks stop its executors), SIGKILL what is left."""
        if self.alive():
            below = descendants(self.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log.close()

    def respawn(self) -> Daemon:
        """The same daemon started again (after a kill), its output appended to the same log."""
        self.log.close()
        return _spawn(self.name, self.args, self.env, Path(self.log.name).parent, mode="a")


@dataclass
class Cluster:
    """A running master and its workers."""

    master_url: str
    web_url: str
    log_dir: Path
    master: Daemon
    workers: list[Daemon] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json", timeout=5) as reply:
            data: dict[str, Any] = json.load(reply)
        return data

    def alive_workers(self) -> int:
        return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                if self.alive_workers() >= n:
                    return
            dead = [d.name for d in (self.master, *self.workers) if not d.alive()]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not {n} workers after {timeout:.0f} s"
                raise RuntimeError(f"the Spark cluster did not start ({why}); logs in {self.log_dir}")
            time.sleep(0.5)

    def worker_of(self, pid: int) -> Daemon | None:
        """The worker that ``pid`` (an executor JVM or its Python worker) runs under."""
        for worker in self.workers:
            if pid in descendants(worker.pid):
                return worker
        return None

    def restart_dead_workers(self) -> None:
        self.workers = [w if w.alive() else w.respawn() for w in self.workers]

    def stop(self) -> None:
        for daemon in (*self.workers, self.master):
            daemon.stop()


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path, mode: str = "w") -> Daemon:
    log = (log_dir / f"{name}.log").open(mode)
    cmd = [str(spark_home() / "bin" / "spark-class"), *args]
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Daemon(name, process, log, args, env)


def start_cluster(
    workers: int = 2, cores: int = 1, memory: str = "1g", log_dir: Path | None = None, timeout: float = 120.0
) -> Cluster:
    """A master and ``workers`` workers on 127.0.0.1, each worker offering ``cores`` cores and
    ``memory``; returns once every worker has registered with the master."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="lookalike-spark-cluster-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = cluster_env(log_dir)
    port, web = free_port(), free_port()
    master_args = [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)]
    cluster = Cluster(
        f"spark://127.0.0.1:{port}",
        f"http://127.0.0.1:{web}",
        log_dir,
        _spawn("master", master_args, env, log_dir),
    )
    try:
        for i in range(workers):
            work = log_dir / f"worker-{i}"
            work.mkdir(exist_ok=True)
            args = [WORKER_CLASS, "--host", "127.0.0.1", "--webui-port", str(free_port())]
            args += ["--cores", str(cores), "--memory", memory, "--work-dir", str(work), cluster.master_url]
            local = {**env, "SPARK_LOCAL_DIRS": str(work / "local")}  # executors' files, resident vectors too
            cluster.workers.append(_spawn(f"worker-{i}", args, local, log_dir))
        cluster.wait_for_workers(workers, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[Cluster]:
    cluster = start_cluster(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores each worker offers")
    parser.add_argument("--memory", default="1g", help="memory each worker offers (one executor's)")
    parser.add_argument(
        "--logs", type=Path, default=None, help="daemon logs and work dirs (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.cores < 1:
        parser.error("--workers and --cores must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with running_cluster(
        workers=args.workers, cores=args.cores, memory=args.memory, log_dir=args.logs
    ) as cluster:
        print(f"Spark master {cluster.master_url} with {args.workers} workers (web UI {cluster.web_url})")
        print(f"logs: {cluster.log_dir}")
        print(f"\n    export LOOKALIKE_SPARK_MASTER={cluster.master_url}\n")
        print("Ctrl-C stops the cluster.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(d.alive() for d in (cluster.master, *cluster.workers)):
                time.sleep(1)
            print("a daemon exited; stopping the cluster", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
