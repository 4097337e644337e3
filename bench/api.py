"""API benchmark: requests/s and p50/p99 latency of search by image_id and by upload, at
1, 8 and 32 concurrent clients, over real HTTP on 127.0.0.1, on the demo catalogue.

    python -m bench.api [--requests N] [--upload-requests N]

Run `make demo SERVE=0` first (`make bench-api` does). Prints JSON; each level's throughput is
also given as a ratio to one client, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from config.settings import CoreSettings
from messaging.broker import free_port

LEVELS = (1, 8, 32)


def start_server(port: int) -> subprocess.Popen[bytes]:
    """`lookalike serve` in its own process, so the clients do not share its interpreter."""
    env = {**os.environ, "LOOKALIKE_API_PORT": str(port), "LOOKALIKE_API_MODEL_QUEUE": "64"}
    server = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"`lookalike serve` exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("`lookalike serve` did not become ready in 300 s")


async def measure(base: str, path: str, clients: int, total: int, request: dict) -> dict[str, float]:  # type: ignore[type-arg]
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(f"{base}{path}", **request)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        await http.post(f"{base}{path}", **request)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": total,
        "errors": errors,
        "requests_per_s": round(total / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="searches by image_id per level")
    parser.add_argument("--upload-requests", type=int, default=64, help="searches by upload per level")
    args = parser.parse_args()
    query = CoreSettings().data_dir / "queries" / "coffee-held-out.jpg"
    if not query.is_file():
        raise SystemExit(f"{query} is missing: run `make demo SERVE=0` first")
    port = free_port()
    server = start_server(port)
    base = f"http://127.0.0.1:{port}"
    image_id = httpx.post(f"{base}/v1/search/image", files={"image": query.read_bytes()}, timeout=300).json()
    by_id = {"json": {"image_id": image_id["results"][0]["images"][0]["image_id"], "k": 10}}
    by_upload = {
        "files": {"image": (Path(query).name, query.read_bytes(), "image/jpeg")},
        "data": {"k": "10"},
    }
    report: dict[str, dict[str, dict[str, float]]] = {"image_id": {}, "upload": {}}
    for clients in LEVELS:
        report["image_id"][f"clients_{clients}"] = asyncio.run(
            measure(base, "/v1/search", clients, args.requests, by_id)
        )
        report["upload"][f"clients_{clients}"] = asyncio.run(
            measure(base, "/v1/search/image", clients, max(args.upload_requests, clients), by_upload)
        )
    for mode in report.values():
        one = mode["clients_1"]["requests_per_s"]
        for figures in mode.values():
            figures["ratio_vs_1_client"] = round(figures["requests_per_s"] / one, 2)
    server.terminate()
    server.wait(timeout=30)
    print(json.dumps({"catalogue": "demo", "levels": LEVELS, **report}, indent=2))


if __name__ == "__main__":
    main()
