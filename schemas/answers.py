"""A search answer as JSON: the one wire format of ``schemas.records.QueryAnswer``, for the
HTTP API (its response model) and the command line alike."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, PlainSerializer

# Scores are float32 underneath: six decimals say all they know.
Score = Annotated[float, PlainSerializer(lambda v: round(v, 6), return_type=float)]


class AnswerImage(BaseModel):
    image_id: uuid.UUID
    score: Score


class AnswerListing(BaseModel):
    """One ranked listing, best matching images first."""

    listing_id: uuid.UUID
    listing_name: str
    score: Score
    inventory: int | None
    images: list[AnswerImage]


class Answer(BaseModel):
    query_id: uuid.UUID
    results: list[AnswerListing]
