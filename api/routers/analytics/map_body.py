"""The body of ``GET /v1/analytics/map``: every point of a run as compact column arrays (JSON),
gzipped and kept per app for the last few runs (a complete run never changes)."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections import OrderedDict

import numpy as np
from fastapi import Request

from store.analytics import AnalyticsStore

MAP_CACHE_RUNS = 2


def map_json(analytics: AnalyticsStore, run_id: uuid.UUID) -> bytes:
    rows = analytics.read_assignments(run_id)
    rows.sort(key=lambda a: (a.cluster_id, a.image_id.bytes))
    listing_ids = sorted({a.listing_id for a in rows}, key=lambda u: u.bytes)
    where = {lid: i for i, lid in enumerate(listing_ids)}
    x = np.array([a.x or 0.0 for a in rows], dtype=np.float64)
    y = np.array([a.y or 0.0 for a in rows], dtype=np.float64)
    doc = {
        "run_id": str(run_id),
        "count": len(rows),
        "x": np.round(x, 4).tolist(),
        "y": np.round(y, 4).tolist(),
        "cluster": [a.cluster_id for a in rows],
        "image_ids": [str(a.image_id) for a in rows],
        "listing": [where[a.listing_id] for a in rows],
        "listing_ids": [str(u) for u in listing_ids],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class MapCache:
    """The last few runs' map bodies, gzipped (a complete run never changes)."""

    def __init__(self, size: int = MAP_CACHE_RUNS) -> None:
        self.size, self._bodies, self._lock = size, OrderedDict[uuid.UUID, bytes](), threading.Lock()

    def get(self, run_id: uuid.UUID) -> bytes | None:
        with self._lock:
            body = self._bodies.get(run_id)
            if body is not None:
                self._bodies.move_to_end(run_id)
            return body

    def put(self, run_id: uuid.UUID, body: bytes) -> None:
        with self._lock:
            self._bodies[run_id] = body
            while len(self._bodies) > self.size:
                self._bodies.popitem(last=False)


def map_cache(request: Request) -> MapCache:
    """The app's map cache, made on first use."""
    state = request.app.state
    if getattr(state, "analytics_map_cache", None) is None:
        state.analytics_map_cache = MapCache()
    cache: MapCache = state.analytics_map_cache
    return cache


def gzipped_map(request: Request, analytics: AnalyticsStore, run_id: uuid.UUID) -> bytes:
    """A run's map body, gzipped: from the app's cache, or built and kept there."""
    cache = map_cache(request)
    body = cache.get(run_id)
    if body is None:
        body = gzip.compress(map_json(analytics, run_id), compresslevel=5)
        cache.put(run_id, body)
    return body
