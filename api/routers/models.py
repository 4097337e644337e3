"""``GET /v1/models``: the models whose vectors the store holds, each with its dimension,
dtype, weights checksum, vector count and coverage of the catalogue, and which one this API
serves. One API process serves one model's index (``LOOKALIKE_MODEL_NAME``); a search that
names another model is refused with the reason, never answered from the wrong vectors."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api.deps import IndexDep, StoreDep, read_access
from store import Store
from store.models import list_models

router = APIRouter(tags=["models"], dependencies=[Depends(read_access)])


class ModelOut(BaseModel):
    name: str
    version: str
    dim: int
    dtype: str
    weights: str  # sha256:<checksum of the weights file>, or random:seed=<n>
    vectors: int
    images: int
    coverage: float  # vectors / images
    served: bool  # whether this API's index is this model's


@router.get("/models", response_model=list[ModelOut])
async def models(store: StoreDep, index: IndexDep) -> list[dict[str, object]]:
    """Every model of the store with its coverage of the catalogue; ``served`` marks the one
    this API searches (switch with ``LOOKALIKE_MODEL_NAME`` once its coverage is complete)."""
    found = await run_in_threadpool(list_models, store)
    return [{**m.as_json(), "served": m.info.name == index.model.name} for m in found]


def require_served(store: Store, served: str, name: str | None) -> None:
    """A search's ``model``: absent or the served one (``served``); else 404 (no such model in
    the store) or 409 (stored, but another API process serves it)."""
    if name is None or name == served:
        return
    if store.get_model(name) is None:
        known = ", ".join(m.name for m in store.models()) or "none"
        raise HTTPException(404, f"the store holds no vectors of model {name!r} (it holds: {known})")
    raise HTTPException(
        409,
        f"this API serves model {served}, not {name}: run an API with "
        f"LOOKALIKE_MODEL_NAME={name} to search its vectors (see GET /v1/models for its coverage)",
    )
