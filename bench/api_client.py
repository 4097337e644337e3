"""The benchmark's HTTP clients: a small HTTP/1.1 keep-alive loop on raw asyncio streams, one
connection per client, so the client side costs little CPU on a machine it shares with the
server (httpx costs several times more per request; :func:`ceiling` measures what this one
can do against a trivial endpoint, and every level reports the client's CPU per request).

Requests are prepared as bytes once; each client sends the next one in turn, waits for the
whole answer (``Content-Length`` or chunked), and records its latency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HEAD_END = b"\r\n\r\n"


def request(method: str, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    """One HTTP/1.1 request, ready to send on a kept-alive connection to 127.0.0.1."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: application/json"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_request(path: str, payload: dict[str, Any]) -> bytes:
    return request("POST", path, json.dumps(payload).encode(), "application/json")


def upload_request(path: str, image: bytes, fields: dict[str, str]) -> bytes:
    """A multipart/form-data POST of one photo (as ``image``) and some form fields."""
    boundary = "lookalike-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return request("POST", path, body, f"multipart/form-data; boundary={boundary}")


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bytes]:
    """Send one request and read its whole answer: (status, body)."""
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(HEAD_END)
    status = int(head.split(b" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    }
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return status, bytes(body)
    return status, await reader.read()


class Connection:
    """One client's kept-alive connection. The server closes connections idle for a few seconds
    (uvicorn's keep-alive timeout), e.g. while many clients warm up: a request that finds its
    connection closed before any answer came is sent again on a new one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reconnects = 0
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            return await exchange(*self.streams, raw)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise  # cut mid-answer: not an idle close
            self.close()
            self.reconnects += 1
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
            return await exchange(*self.streams, raw)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Level:
    """What one level of concurrency measured."""

    clients: int
    latencies: list[float]
    errors: int
    seconds: float
    client_cpu_s: float
    reconnects: int = 0  # kept-alive connections the server had closed (idle), opened again

    def figures(self) -> dict[str, Any]:
        ms = np.array(self.latencies or [0.0]) * 1000
        n = len(self.latencies)
        return {
            "clients": self.clients,
            "requests": n,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(n / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "client_cpu_ms_per_request": round(self.client_cpu_s / max(1, n) * 1000, 3),
            "reconnects": self.reconnects,
        }


async def run_level(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    total: int,
    on_ready: Callable[[], object] | None = None,
) -> Level:
    """``clients`` connections, each warmed up by one request, then ``total`` requests in all
    (each client takes the next until none is left), timed from the moment all are connected
    and warm (when ``on_ready`` is called, e.g. to read the server's counters)."""
    next_one = 0
    latencies: list[float] = []
    errors = 0
    reconnects: list[int] = []
    ready, go = asyncio.Semaphore(0), asyncio.Event()

    async def client(number: int) -> None:
        nonlocal next_one, errors
        connection = Connection(port)
        try:
            await connection.send(requests[number % len(requests)])
            ready.release()
            await go.wait()
            while next_one < total:
                raw = requests[next_one % len(requests)]
                next_one += 1
                started = time.perf_counter()
                status, _ = await connection.send(raw)
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            connection.close()
            reconnects.append(connection.reconnects)

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    for _ in range(clients):
        await ready.acquire()
    if on_ready is not None:
        on_ready()
    cpu, started = time.process_time(), time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Level(clients, latencies, errors, seconds, cpu, sum(reconnects))


def measure(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    total: int,
    on_ready: Callable[[], object] | None = None,
) -> Level:
    return asyncio.run(run_level(port, requests, clients, total, on_ready))


def ceiling(port: int, clients: int = 32, total: int = 3000) -> dict[str, Any]:
    """This client against the server's cheapest endpoint (``GET /healthz``): the most requests/s
    the pair can do here, and what the client spends of it (its CPU per request)."""
    level = measure(port, [request("GET", "/healthz")], clients, total).figures()
    return {
        "endpoint": "GET /healthz",
        "clients": clients,
        "requests_per_s": level["requests_per_s"],
        "client_cpu_ms_per_request": level["client_cpu_ms_per_request"],
        "client_alone_requests_per_s": round(1000 / max(level["client_cpu_ms_per_request"], 1e-3)),
    }
