"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import IndexDep, StoreDep
from messaging.admin import broker_health
from store import StoreError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, store: StoreDep, index: IndexDep) -> JSONResponse:
    """Store, index and (when configured) broker are usable, and no graceful stop is draining
    the service; 503 says which is not. ``follower`` says whether the index follows new
    images, or what it waits for (a topic nothing was published to yet, the broker). Engine
    `spark`: ``engine`` says whether the reader of the service's answers follows its topic."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(store.get_model, index.model.name)
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = f"unavailable: {exc}"
    spark = request.app.state.components.spark
    if spark is None:
        checks["index"] = f"ok: {len(index)} vectors" if len(index) else "empty"
    else:
        checks["index"] = "none in this process: the Spark search service answers"
        checks["engine"] = f"spark: answers reader {spark.client.status}"
    checks["model"] = f"{index.model.name} ({index.model.dim}-d, weights {index.model.weights})"
    follower = index.follower
    checks["follower"] = "off" if follower is None else str(follower.status)
    if request.app.state.components.process:
        checks["process"] = request.app.state.components.process
    ingest = request.app.state.components.ingest
    if ingest is None:
        checks["broker"] = "not configured"
    else:
        checks["broker"] = await run_in_threadpool(broker_health, ingest.kafka.client_config())
        checks["ingest"] = (
            "draining: a graceful stop is under way, writes get 503" if ingest.gate.closed else "ok"
        )
    ready = (
        checks["store"] == "ok"
        and checks["broker"] in ("ok", "not configured")
        and checks.get("ingest", "ok") == "ok"
        and (spark is None or spark.client.connected)
    )
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
