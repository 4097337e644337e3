"""Vectors resident beside the executors, outside Spark's block manager.

A pass over blocks persisted in the JVM copies every cached vector out of the JVM into the
Python workers, every time: at 1 000 000 x 1280 on ``local[2]`` that copy was 6.1 s of a
batch's 8.0 s (docs/spark-serving.md). So Spark keeps only a small :class:`Resident` per
partition. The load task writes its partition's blocks as ``.npy`` files into the executor's
own local directory (``SPARK_LOCAL_DIRS``: Spark deletes it with the executor, and a standalone
worker with the application), and its descriptor is what Spark persists. Each pass's task for a
partition is scheduled where that descriptor is cached (the executor that wrote the files) and
maps them read-only: the operating system's page cache holds one copy per host, shared by
every Python worker, and a worker that Spark reuses from pass to pass keeps its mappings.

An executor lost takes its cached descriptors with it; Spark recomputes them from the lineage
(the load task) on another executor, which writes the files there. A task that runs on a host
without its partition's files (Spark gave up waiting for locality) reads the partition again
from the store, or, for a connector's token range, fails with a clear error so Spark retries it.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark import TaskContext

from search.spark.blocks import FIELDS, Block

log = logging.getLogger(__name__)
ROOT = "lookalike-vectors"
Source = Callable[[], Iterator[Block]]


@dataclass(frozen=True)
class Resident:
    """One cached partition: where its blocks lie on the host that loaded it, what they hold,
    and how to read them again (None: they cannot be, from inside a task)."""

    folder: str
    blocks: int
    rows: int
    listings: int
    nbytes: int
    source: Source | None = None


def folder_for(model: str, generation: int, partition: int) -> Path:
    """Where this executor keeps ``partition`` of a cache generation."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    if not dirs:
        raise RuntimeError("SPARK_LOCAL_DIRS is not set: resident vectors live inside Spark tasks only")
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", model)
    return Path(dirs[partition % len(dirs)]) / ROOT / f"{safe}-{generation}" / f"part-{partition:05d}"


def keep(blocks: Iterable[Block], folder: Path, source: Source | None) -> Resident:
    """Write ``blocks`` into ``folder`` (replacing what an earlier attempt left) and describe them."""
    partial = folder.with_name(f"{folder.name}.writing-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    count = rows = listings = nbytes = 0
    for block in blocks:
        for name in FIELDS:
            np.save(partial / f"{count}.{name}.npy", getattr(block, name))
        count, rows = count + 1, rows + block.rows
        listings, nbytes = listings + len(block.listing_ids), nbytes + block.vectors.nbytes
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return Resident(str(folder), count, rows, listings, nbytes, source)


_mapped: dict[str, list[Block]] = {}  # this Python worker's mappings, by partition folder


def blocks(resident: Resident) -> list[Block]:
    """The partition's blocks, mapped read-only and kept mapped for this worker's next passes.
    The first use of a generation here lets go of (and deletes) the generations before it."""
    found = _mapped.get(resident.folder)
    if found is not None:
        return found
    folder = Path(resident.folder)
    if not folder.is_dir():
        return _read_again(resident)
    _forget_before(folder.parent)
    found = [_mapped_block(folder, i) for i in range(resident.blocks)]
    _mapped[resident.folder] = found
    _settle()
    return found


def _settle() -> None:
    """In a Spark task's Python worker, freeze what it holds from pass to pass (its imports, its
    mappings) out of the garbage collector's walks: pyspark's daemon runs ``gc.collect()`` after
    every task of a reused worker, which walked all of it (about 0.1 s a task, measured on
    ``local[2]``). Any other process (a driver, a test) is left as it is."""
    if TaskContext.get() is None:
        return
    gc.collect()
    gc.freeze()


def _mapped_block(folder: Path, i: int) -> Block:
    arrays = {name: np.load(folder / f"{i}.{name}.npy", mmap_mode="r") for name in FIELDS}
    return Block(**arrays)


def _forget_before(generation: Path) -> None:
    """Unmap the other generations' folders; delete this host's older generations of the model."""
    for other in [f for f in _mapped if Path(f).parent != generation]:
        del _mapped[other]
    model, _, number = generation.name.rpartition("-")
    for old in generation.parent.glob(f"{model}-*"):
        n = old.name.rpartition("-")[2]
        if n.isdigit() and int(n) < int(number):
            shutil.rmtree(old, ignore_errors=True)


def _read_again(resident: Resident) -> list[Block]:
    if resident.source is None:
        raise FileNotFoundError(
            f"{resident.folder} is not on this host: the task ran away from the executor that loaded "
            "its partition, whose source (a connector's token range) cannot be read from a task; "
            "Spark retries it (spark.locality.wait.node bounds how long it waits for that host)"
        )
    log.warning("%s is not on this host: reading the partition from the store again", resident.folder)
    return list(resident.source())
