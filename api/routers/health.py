"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import Service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, service: Service) -> JSONResponse:
    """Store, index and (when configured) broker are usable; 503 says which is not."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(service.store.get_model, service.index.model.name)
        checks["store"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["store"] = f"unavailable: {exc}"
    checks["index"] = f"ok: {len(service.index)} vectors" if len(service.index) else "empty"
    producer = request.app.state.producer
    if producer is None:
        checks["broker"] = "not configured"
    else:
        checks["broker"] = await run_in_threadpool(producer.check)
    ready = checks["store"] == "ok" and checks["broker"] in ("ok", "not configured")
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
