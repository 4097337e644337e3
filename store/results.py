"""``query_results`` rows and answers, one definition each way (the engine's service, the Spark
job and the API all write and read answers through these)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from schemas.records import ImageMatch, ListingResult, QueryAnswer
from store.base import ResultRow


def result_rows(answer: QueryAnswer) -> list[ResultRow]:
    """An answer as the rows stored for it, best first."""
    return [
        ResultRow(
            r.score,
            r.listing_id,
            r.listing_name,
            r.inventory,
            tuple((m.image_id, m.score) for m in r.images),
        )
        for r in answer.results
    ]


def answer_from_rows(query_id: uuid.UUID, rows: Sequence[ResultRow]) -> QueryAnswer:
    """A stored answer, read back from ``query_results``."""
    return QueryAnswer(
        query_id,
        tuple(
            ListingResult(
                r.listing_id,
                r.listing_name,
                r.score,
                r.inventory,
                tuple(ImageMatch(i, s) for i, s in r.matches),
            )
            for r in rows
        ),
    )
