"""Kafka message formats of the Spark search service (``lookalike spark-serve``).

``lookalike.queries``: key = the query id (UUID text); value = JSON :class:`SearchMessage`: the
query vector (little-endian float32, base64) already resolved by the sender (the API embeds an
upload or looks an image id up), with the search options and the listings left out.
``lookalike.answers``: key = the query id; value = JSON :class:`AnswerNotice`, sent once the
query's rows are in ``query_results`` (the answer itself is read from there, by query id), or
with ``error`` set when the query could not be answered (a wrong dimension, an unknown model).
"""

from __future__ import annotations

import base64
import uuid
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.scoring import MAX_K, Aggregation, ScoreOptions, SearchRequest

QUERIES_TOPIC = "lookalike.queries"
ANSWERS_TOPIC = "lookalike.answers"


class SearchMessage(BaseModel):
    """One query for the Spark search service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_id: uuid.UUID
    model: str = Field(min_length=1, max_length=100)
    vector: str
    """The L2-normalised query vector: float32 little-endian, base64."""
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    aggregation: Aggregation = "max"
    top_n: int = Field(default=3, ge=1)
    threshold: float = 0.8
    min_score: float | None = None
    in_stock_only: bool = False
    exclude: tuple[uuid.UUID, ...] = ()
    sent_at: float = 0.0
    """The sender's clock (seconds since the epoch), for the queue-wait metric."""

    @classmethod
    def of(
        cls, query_id: uuid.UUID, model: str, request: SearchRequest, sent_at: float = 0.0
    ) -> SearchMessage:
        o = request.opts
        data = np.ascontiguousarray(request.vector, dtype="<f4").tobytes()
        return cls(
            query_id=query_id,
            model=model,
            vector=base64.b64encode(data).decode("ascii"),
            k=o.k,
            aggregation=o.aggregation,
            top_n=o.top_n,
            threshold=o.threshold,
            min_score=o.min_score,
            in_stock_only=request.in_stock_only,
            exclude=tuple(sorted(request.exclude, key=lambda u: u.bytes)),
            sent_at=sent_at,
        )

    def vector_array(self) -> npt.NDArray[np.float32]:
        raw = base64.b64decode(self.vector, validate=True)
        if len(raw) % 4:
            raise ValueError(f"a float32 vector has a multiple of 4 bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def request(self) -> SearchRequest:
        opts = ScoreOptions(
            k=self.k,
            aggregation=self.aggregation,
            top_n=self.top_n,
            threshold=self.threshold,
            min_score=self.min_score,
        )
        return SearchRequest(self.vector_array(), opts, self.in_stock_only, frozenset(self.exclude))

    def key(self) -> bytes:
        return str(self.query_id).encode()

    def value(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, value: bytes | None) -> SearchMessage:
        """The message, or ValueError naming what is wrong with it."""
        try:
            return cls.model_validate_json(value or b"")
        except ValidationError as exc:
            raise ValueError(f"not a search message: {exc.errors()[0]['msg']}") from None


class AnswerNotice(BaseModel):
    """A finished query: its rows are in ``query_results`` (or ``error`` says why there are none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_id: uuid.UUID
    results: int = Field(default=0, ge=0, description="rows written to query_results")
    error: str | None = None

    def key(self) -> bytes:
        return str(self.query_id).encode()

    def value(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, value: bytes | None) -> AnswerNotice:
        try:
            return cls.model_validate_json(value or b"")
        except ValidationError as exc:
            raise ValueError(f"not an answer notice: {exc.errors()[0]['msg']}") from None
