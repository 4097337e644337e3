"""Where a request's time goes at high rates: ``lookalike serve`` with instruments, for
``python -m bench.api --profile``.

    python -m bench.api_profile        (what the benchmark runs, with LOOKALIKE_* settings)

The same app and components as ``lookalike serve``, plus
* stage clocks: the service's calls into the index (the scan and ranking, the id lookup) and
  the store (listing names, stock, the ``query_results`` write) are wrapped, so each stage's
  calls and wall time per request are counted (on the worker threads that run them);
* cProfile on the event loop's thread only (it profiles the thread that enables it): each
  function's own time goes to one bucket by its file or built-in (uvicorn's HTTP/1.1 parser
  h11, pydantic validation and serialisation, JSON, the framework, logging, metrics, the
  hand-off to worker threads, socket calls, idle in ``epoll``), so the loop's busy time is split
  by what it did. cProfile slows call-heavy code more than the rest: the shares are
  approximate, and the absolute figures are the unprofiled ones (``/proc`` CPU per thread).
  (A sampling profiler inside the process sees the loop only where it releases the GIL, in
  ``epoll`` and socket calls, so it was not used.)
* ``BENCH_API_STUB=search``: the index answers every query with one fixed ranking, at once, so
  a run measures everything but the scan (HTTP, validation, stock and names, the write, the
  event loop): the rate the rest of the path allows.

``GET /_bench/profile`` returns the figures since ``POST /_bench/profile/reset``.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.deps import Components
from config.settings import Settings
from lookalike import stack

# (bucket, fragments): the first bucket with a fragment in "file:function" (cProfile's key)
BUCKETS = (
    ("idle (epoll)", ("select.epoll",)),
    ("socket calls", ("_socket.socket",)),
    ("logging (access log)", ("/logging/", "_io.TextIOWrapper")),
    ("metrics (prometheus)", ("prometheus_client", "api/metrics.py")),
    ("JSON encode/decode", ("/json/", "_json")),
    ("validation + serialisation (pydantic)", ("pydantic", "fastapi/_compat", "fastapi/encoders")),
    ("HTTP/1.1 parsing (h11 + uvicorn)", ("/h11/", "uvicorn/")),
    ("thread hand-off (anyio)", ("anyio", "concurrent/futures", "threading.py", "_thread")),
    ("framework (starlette/fastapi routing, middleware)", ("starlette", "fastapi")),
    ("asyncio loop", ("asyncio", "selectors.py", "_contextvars")),
    ("lookalike code (api/, search/, store/)", ("/api/", "/search/", "/store/")),
)
IDLE = "idle (epoll)"
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


class LoopProfile:
    """cProfile of the event loop's thread, restartable from a request (which runs on it)."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.started = time.perf_counter()

    def restart(self) -> None:
        self.profile.disable()
        self.profile = cProfile.Profile()
        self.started = time.perf_counter()
        self.profile.enable()

    def figures(self) -> dict[str, Any]:
        """Own time per bucket (idle, and busy shares without it) and the busiest functions."""
        self.profile.disable()
        stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        self.profile.enable()
        own: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        for (path, line, name), (_, _, tottime, *_) in stats.items():
            key = f"{path}:{name}"
            own[bucket(key)] += tottime
            if bucket(key) != IDLE:
                functions[f"{path.rsplit('site-packages/', 1)[-1]}:{line}({name})"] += tottime
        busy = sum(v for k, v in own.items() if k != IDLE)
        return {
            "profiled_s": round(time.perf_counter() - self.started, 2),
            "busy_s": round(busy, 3),
            "idle_s": round(own[IDLE], 3),
            "busy_share": {k: round(v / busy, 3) for k, v in own.most_common() if k != IDLE and busy},
            "top_functions_s": {k: round(v, 4) for k, v in functions.most_common(15)},
        }


def bucket(key: str) -> str:
    for name, fragments in BUCKETS:
        if any(f in key for f in fragments):
            return name
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


def add_routes(app: FastAPI, clocks: Clocks, loop: LoopProfile) -> None:
    @app.get("/_bench/profile", include_in_schema=False)
    async def profile() -> dict[str, Any]:
        with clocks.lock:
            stages = {
                s: {"calls": n, "ms_per_call": round(clocks.seconds[s] / n * 1000, 3)}
                for s, n in sorted(clocks.calls.items())
            }
        return {"stages": stages, "event_loop": loop.figures()}

    @app.post("/_bench/profile/reset", include_in_schema=False)
    async def reset() -> dict[str, str]:
        with clocks.lock:
            clocks.calls.clear()
            clocks.seconds.clear()
        loop.restart()
        return {"status": "reset"}


def main() -> None:
    settings = Settings.from_env()
    clocks = Clocks()
    stub = os.environ.get("BENCH_API_STUB", "")
    app = create_app(settings.api, lambda: instrument(stack.api_components(settings), clocks, stub))
    loop = LoopProfile()
    add_routes(app, clocks, loop)
    loop.restart()  # in this thread, the one uvicorn's event loop runs on
    uvicorn.run(app, host=settings.api.host, port=settings.api.port)


if __name__ == "__main__":
    main()
