"""What the engine alone allows a catalogue: its passes timed in the benchmark's own process,
before the server starts (so nothing else runs), on the same store the server will load.

For each batch size B it times the in-memory engine ranking B stored vectors in one
``search_requests`` call (the call a pass of the service makes), and reports the time per query
and ``ceiling_vs_1``: a query's time alone over its share of a batch of B. With coalescing and
no fixed wait, B concurrent clients make batches of about B/2 (the other half are being answered
or sending), so this is the most the engine lets throughput grow with clients before any HTTP,
JSON or event-loop cost: the target's ratio cannot exceed it on this machine.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from config.settings import SearchSettings
from schemas.records import ModelInfo, as_uuid
from search.loader import load_index
from search.scoring import ScoreOptions, SearchRequest
from search.tier import SearchIndex
from store import open_store

BATCHES = (1, 4, 16, 64)
RUNS = 5


def engine_alone(store_url: str, model: ModelInfo, batches: Sequence[int] = BATCHES) -> dict[str, Any]:
    """Per batch size: ms per query (best of RUNS passes, exact) and the ratio to a query alone."""
    store = open_store(store_url)
    try:
        index = load_index(store, model, SearchSettings(follow="off", mode="exact"))
    finally:
        store.close()
    found = {f"batch_{b}": {"ms_per_query": round(_pass_s(index, b) * 1000 / b, 2)} for b in batches}
    rows = len(index)
    del index  # the server loads its own copy next
    gc.collect()
    alone = found["batch_1"]["ms_per_query"]
    for figures in found.values():
        figures["ceiling_vs_1"] = round(alone / figures["ms_per_query"], 2)
    return {"mode": "exact", "rows": rows, "runs": RUNS, "batches": found}


def _pass_s(index: SearchIndex, batch: int) -> float:
    """The best of RUNS passes ranking ``batch`` stored vectors (k=10) in one call."""
    rng = np.random.default_rng(batch)
    ids = index.image_id_array()
    picked = ids[rng.choice(len(ids), size=batch, replace=False)]
    requests = [SearchRequest(index.image_vector(as_uuid(i))[1], ScoreOptions(k=10)) for i in picked]
    index.search_requests(requests)  # warm
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        index.search_requests(requests)
        best = min(best, time.perf_counter() - started)
    return best
