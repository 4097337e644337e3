"""Listings: a page of the catalogue (``GET /v1/listings``), and one listing with its name, live
stock and images (``GET /v1/listings/{listing_id}``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import StoreDep, read_access
from schemas.records import ImageRecord
from store import Store

router = APIRouter(tags=["listings"], dependencies=[Depends(read_access)])
MAX_PAGE = 200
MAX_IMAGES = 20


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


class CatalogueListingOut(BaseModel):
    listing_id: uuid.UUID
    listing_name: str
    inventory: int | None = Field(description="live stock; null: no stock level known")
    image_count: int
    images: list[ImageOut] = Field(description="the first `images` of its images, by image id")


class CataloguePageOut(BaseModel):
    listings: list[CatalogueListingOut]
    next_after: uuid.UUID | None = Field(
        description="pass as `after` for the next page; null: this page is the catalogue's last"
    )


def _image_out(i: ImageRecord) -> ImageOut:
    return ImageOut(
        image_id=i.image_id,
        content_type=i.content_type,
        width=i.width,
        height=i.height,
        content=f"/v1/images/{i.image_id}/content",
        thumbnail=f"/v1/images/{i.image_id}/thumbnail",
    )


def catalogue_page(store: Store, limit: int, after: uuid.UUID | None, images: int) -> CataloguePageOut:
    page = store.listings_page(limit + 1, after)  # one more: is there a next page?
    more, page = len(page) > limit, page[:limit]
    ids = [lid for lid, _ in page]
    records = store.listings_images(ids)
    stock = store.get_stock(ids)
    return CataloguePageOut(
        listings=[
            CatalogueListingOut(
                listing_id=lid,
                listing_name=name,
                inventory=stock[lid].inventory if lid in stock else None,
                image_count=len(records.get(lid, ())),
                images=[_image_out(i) for i in records.get(lid, [])[:images]],
            )
            for lid, name in page
        ],
        next_after=ids[-1] if more else None,
    )


@router.get("/listings", response_model=CataloguePageOut)
async def catalogue(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 24,
    after: Annotated[uuid.UUID | None, Query(description="`next_after` of the previous page")] = None,
    images: Annotated[int, Query(ge=0, le=MAX_IMAGES, description="images listed per listing")] = 4,
) -> CataloguePageOut:
    """A page of the catalogue: listings with their name, live stock, image count and first
    images. Keyset paging in the store's own order (listing id bytes on SQLite, the token ring
    on Cassandra): a page costs the same wherever it is, and listings added or removed
    meanwhile never shift the pages that follow. The order is arbitrary, not alphabetical."""
    return await run_in_threadpool(catalogue_page, store, limit, after, images)


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
        images=[_image_out(i) for i in images],
    )
