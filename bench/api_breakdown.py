"""The benchmark's profile mode (``python -m bench.api --profile``): where a request's time goes
at high rates. One catalogue and mode, served by :mod:`bench.api_profile` twice (the real
search, then the search stubbed out), by image id and by vector at 1 client and at many: per
request, the wall time of each stage on the worker threads (scan, id lookup, names, stock, the
``query_results`` write), the event loop's CPU and what its samples were doing (HTTP parsing,
validation, JSON, the framework, logging, idle), and the rate the path allows without the scan.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench import api_client, api_server

COMMAND = ("bench.api_profile",)


def level_breakdown(
    server: api_server.Server, requests: list[bytes], clients: int, total: int
) -> dict[str, Any]:
    """One level with the server's stage clocks and loop samples reset when the clients are warm."""
    snapshots: list[api_server.Snapshot] = []

    def ready() -> None:
        httpx.post(f"{server.base}/_bench/profile/reset", timeout=30)
        snapshots.append(server.snapshot())

    level = api_client.measure(server.port, requests, clients, total, ready)
    after = server.snapshot()
    profile = httpx.get(f"{server.base}/_bench/profile", timeout=30).json()
    n = max(1, len(level.latencies))
    figures = level.figures()
    figures["server"] = api_server.server_figures(server.process.pid, snapshots[0], after, "search", n)
    figures["stages_ms_per_request"] = {
        stage: round(v["calls"] * v["ms_per_call"] / n, 3) for stage, v in profile["stages"].items()
    }
    figures["event_loop_profile"] = profile["event_loop"]
    return figures


def breakdown(
    env: dict[str, str],
    log_dir: Any,
    name: str,
    requests: dict[str, list[bytes]],
    clients: list[int],
    total: int,
) -> dict[str, Any]:
    """``requests`` by kind; each kind at each level of ``clients``, with the real search and
    with it stubbed; the ratio of the stubbed rate to the real one at each level."""
    out: dict[str, Any] = {}
    for variant, stub in (("real", ""), ("search_stubbed", "search")):
        log = log_dir / f"serve-profile-{name}-{variant}.log"
        with api_server.serving(env | {"BENCH_API_STUB": stub}, log, COMMAND) as server:
            out[variant] = {
                kind: {f"clients_{c}": level_breakdown(server, reqs, c, max(total, 2 * c)) for c in clients}
                for kind, reqs in requests.items()
            }
    for kind in requests:
        for c in clients:
            real = out["real"][kind][f"clients_{c}"]["requests_per_s"]
            stubbed = out["search_stubbed"][kind][f"clients_{c}"]["requests_per_s"]
            out["search_stubbed"][kind][f"clients_{c}"]["ratio_vs_real"] = (
                round(stubbed / real, 2) if real else None
            )
    return out
