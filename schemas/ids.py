"""Stable ids: UUIDv5 from external names, so ingesting the same thing twice changes nothing."""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("6f1f3c9e-7a4b-5d2e-9c1a-4c6f6b6f6b61")


def listing_id(external_name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"listing:{external_name}")


def image_id(listing_external_name: str, image_external_name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"image:{listing_external_name}/{image_external_name}")


def parse_uuid(value: str, what: str = "id") -> uuid.UUID:
    """Parse a UUID, with an error that says what was expected and what came."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ValueError(
            f"{what} must be a UUID like 123e4567-e89b-12d3-a456-426614174000, got {value!r}"
        ) from None
