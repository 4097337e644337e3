"""A listing: its name, live stock and images."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api.deps import StoreDep, read_access

router = APIRouter(tags=["listings"], dependencies=[Depends(read_access)])


class ImageOut(BaseModel):
    image_id: uuid.UUID
    content_type: str
    width: int
    height: int
    content: str
    thumbnail: str


class ListingOut(BaseModel):
    listing_id: uuid.UUID
    listing_name: str
    inventory: int | None
    images: list[ImageOut]


@router.get("/listings/{listing_id}", response_model=ListingOut)
async def listing(listing_id: uuid.UUID, store: StoreDep) -> ListingOut:
    images = await run_in_threadpool(store.listing_images, listing_id)
    if not images:
        raise HTTPException(404, f"listing {listing_id} has no images in the catalogue")
    names = await run_in_threadpool(store.listing_names, [listing_id])
    stock = await run_in_threadpool(store.get_stock, [listing_id])
    return ListingOut(
        listing_id=listing_id,
        listing_name=names.get(listing_id, ""),
        inventory=stock[listing_id].inventory if listing_id in stock else None,
        images=[
            ImageOut(
                image_id=i.image_id,
                content_type=i.content_type,
                width=i.width,
                height=i.height,
                content=f"/v1/images/{i.image_id}/content",
                thumbnail=f"/v1/images/{i.image_id}/thumbnail",
            )
            for i in images
        ],
    )
