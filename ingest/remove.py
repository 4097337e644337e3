"""Removing a listing or an image: a removal message on the images topic, so the workers apply
it to the store after the listing's earlier uploads, and index followers drop it at once."""

from __future__ import annotations

import uuid

from schemas.messages import DeleteMessage
from store import Store


class UnknownTarget(LookupError):
    """Nothing stored under that id (API: 404)."""


def removal(store: Store, listing_id: uuid.UUID | None, image_id: uuid.UUID | None) -> DeleteMessage:
    """The removal of one image (its listing read from the store) or of a whole listing."""
    if (listing_id is None) == (image_id is None):
        raise ValueError("give exactly one of a listing id or an image id")
    if image_id is not None:
        listing = store.image_listing(image_id)
        if listing is None:
            raise UnknownTarget(f"image {image_id} is not stored")
        return DeleteMessage(listing, image_id)
    assert listing_id is not None
    if not store.listing_images(listing_id) and not store.listing_names([listing_id]):
        raise UnknownTarget(f"listing {listing_id} is not stored")
    return DeleteMessage(listing_id)
