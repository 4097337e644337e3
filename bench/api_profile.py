"""Where a request's time goes at high rates: ``lookalike serve`` with instruments, for
``python -m bench.api --profile``.

    python -m bench.api_profile        (what the benchmark runs, with LOOKALIKE_* settings)

The same app and components as ``lookalike serve``, plus
* stage clocks: the service's calls into the index (the scan and ranking, the id lookup) and
  the store (listing names, stock, the ``query_results`` write) are wrapped, so each stage's
  calls and wall time per request are counted (on the worker threads that run them);
* a sampling profiler of the event loop's thread (every ``SAMPLE_S``): each sample is put in
  one bucket by the innermost frame it recognises (uvicorn's HTTP/1.1 parser h11, pydantic
  validation, JSON, the framework, logging, metrics, the hand-off to worker threads, idle in
  ``select``), so the loop's busy time is split by what it did;
* ``BENCH_API_STUB=search``: the index answers every query with one fixed ranking, at once, so
  a run measures everything but the scan (HTTP, validation, stock and names, the write, the
  event loop): the rate the rest of the path allows.

``GET /_bench/profile`` returns the figures since ``POST /_bench/profile/reset``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.deps import Components
from config.settings import Settings
from lookalike import stack

SAMPLE_S = 0.002
# (bucket, path fragments): the first bucket whose fragment is in a frame's file, innermost first
BUCKETS = (
    ("idle (select)", ("selectors.py",)),
    ("logging (access log)", ("/logging/",)),
    ("metrics (prometheus)", ("prometheus_client", "api/metrics.py")),
    ("JSON encode/decode", ("/json/",)),
    ("validation + serialisation (pydantic)", ("pydantic", "fastapi/_compat", "fastapi/encoders")),
    ("HTTP/1.1 parsing (h11 + uvicorn)", ("/h11/", "uvicorn/protocols")),
    ("thread hand-off (anyio)", ("anyio", "concurrent/futures", "threading.py")),
    ("framework (starlette/fastapi routing, middleware)", ("starlette", "fastapi")),
    ("asyncio loop", ("asyncio",)),
)
STAGES = {  # those the service has are clocked
    "index": ("search_many", "search_requests", "image_vector", "listing_vectors"),
    "store": ("write_query_results", "write_many_query_results", "listing_names", "get_stock"),
}


class Clocks:
    """Calls and wall seconds of each wrapped stage (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, name: str, stage: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                with self.lock:
                    self.calls[stage] += 1
                    self.seconds[stage] += time.perf_counter() - started

        setattr(owner, name, timed)


class LoopSampler(threading.Thread):
    """Samples the event loop thread's stack and counts samples per bucket."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.loop_thread = loop_thread
        self.counts: Counter[str] = Counter()

    def run(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None:
                self.counts[bucket(frame)] += 1


def bucket(frame: FrameType | None) -> str:
    while frame is not None:
        path = frame.f_code.co_filename
        for name, fragments in BUCKETS:
            if any(f in path for f in fragments):
                return name
        if "/api/" in path or "/search/" in path or "/store/" in path:
            return "lookalike code (api/, search/, store/)"
        frame = frame.f_back
    return "other"


def stub_search(index: Any) -> None:
    """The index answers every query with the first real ranking it made, at once (both entry
    points: one query matrix, or a batch of requests)."""
    for name in ("search_many", "search_requests"):
        if hasattr(index, name):
            setattr(index, name, _fixed(getattr(index, name)))


def _fixed(real: Callable[..., Any]) -> Callable[..., Any]:
    fixed: list[Any] = []

    def answer(queries: Any, *args: Any, **kwargs: Any) -> Any:
        if not fixed:
            fixed.extend(real(queries[:1], *args, **kwargs))
        return [fixed[0] for _ in range(len(queries))]

    return answer


def instrument(components: Components, clocks: Clocks, stub: str) -> Components:
    service = components.service
    if stub == "search":
        stub_search(service.index)
    for owner, names in ((service.index, STAGES["index"]), (service.store, STAGES["store"])):
        for name in names:
            if hasattr(owner, name):
                clocks.wrap(owner, name, f"{type(owner).__name__}.{name}")
    return components


def add_routes(app: FastAPI, clocks: Clocks, sampler: LoopSampler) -> None:
    @app.get("/_bench/profile", include_in_schema=False)
    async def profile() -> dict[str, Any]:
        with clocks.lock:
            stages = {
                s: {"calls": n, "ms_per_call": round(clocks.seconds[s] / n * 1000, 3)}
                for s, n in sorted(clocks.calls.items())
            }
        total = sum(sampler.counts.values())
        loop = {k: round(v / total, 3) for k, v in sampler.counts.most_common()} if total else {}
        return {"stages": stages, "event_loop_samples": total, "event_loop_share": loop}

    @app.post("/_bench/profile/reset", include_in_schema=False)
    async def reset() -> dict[str, str]:
        with clocks.lock:
            clocks.calls.clear()
            clocks.seconds.clear()
        sampler.counts.clear()
        return {"status": "reset"}


def main() -> None:
    settings = Settings.from_env()
    clocks = Clocks()
    stub = os.environ.get("BENCH_API_STUB", "")
    app = create_app(settings.api, lambda: instrument(stack.api_components(settings), clocks, stub))
    sampler = LoopSampler(threading.get_ident())
    add_routes(app, clocks, sampler)
    sampler.start()
    uvicorn.run(app, host=settings.api.host, port=settings.api.port)


if __name__ == "__main__":
    main()
