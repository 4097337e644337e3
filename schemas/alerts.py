"""``lookalike.alerts``: what the index follower found strange about an image that arrived after
the last analytics run, for a moderation queue.

key = listing_id (one listing's alerts stay on one partition, in order); value = JSON
``{"format", "reason", "listing_id", "image_id", "model", "run_id", "score", "percentile",
"threshold", "evidence": [{"image_id", "listing_id", "score"}], "created_at"}``; the reason also
travels in a header so a queue can route without parsing.

Reasons:
* ``cross_listing_duplicate``: images of *other* listings at or above the run's duplicate
  similarity (``score``: the best similarity, ``threshold``: the run's duplicate similarity);
* ``outlier``: the catalogue outlier score (1 - similarity to the k-th nearest image of other
  listings) at or past the run's alert percentile (``score``, ``percentile``, ``threshold``: the
  alert percentile); the evidence is the nearest images of other listings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from schemas.analytics import Neighbour
from schemas.messages import FORMAT_VERSION, Headers, MessageError

AlertReason = Literal["cross_listing_duplicate", "outlier"]
ALERT_REASONS: tuple[str, ...] = ("cross_listing_duplicate", "outlier")


@dataclass(frozen=True)
class Alert:
    reason: AlertReason
    listing_id: uuid.UUID
    image_id: uuid.UUID
    model: str
    run_id: uuid.UUID  # the run it was scored against
    score: float
    percentile: float | None  # outliers: where the score falls among the run's scores
    threshold: float
    evidence: tuple[Neighbour, ...]
    created_at: datetime

    def __post_init__(self) -> None:
        if self.reason not in ALERT_REASONS:
            raise ValueError(f"alert reason must be one of {ALERT_REASONS}, got {self.reason!r}")

    def key(self) -> bytes:
        return str(self.listing_id).encode()

    def headers(self) -> Headers:
        return [("format", FORMAT_VERSION.encode()), ("reason", self.reason.encode())]

    def as_json(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "reason": self.reason,
            "listing_id": str(self.listing_id),
            "image_id": str(self.image_id),
            "model": self.model,
            "run_id": str(self.run_id),
            "score": round(float(self.score), 6),
            "percentile": None if self.percentile is None else round(float(self.percentile), 3),
            "threshold": round(float(self.threshold), 6),
            "evidence": [n.as_json() for n in self.evidence],
            "created_at": self.created_at.isoformat(),
        }

    def value(self) -> bytes:
        return json.dumps(self.as_json()).encode()


def parse_alert(value: bytes | None) -> Alert:
    """An alert from its message value; MessageError says what is wrong."""
    if not value:
        raise MessageError("empty alert message")
    try:
        data = json.loads(value)
        evidence: Sequence[dict[str, object]] = data["evidence"]
        pct = data.get("percentile")
        return Alert(
            reason=data["reason"],
            listing_id=uuid.UUID(data["listing_id"]),
            image_id=uuid.UUID(data["image_id"]),
            model=str(data["model"]),
            run_id=uuid.UUID(data["run_id"]),
            score=float(data["score"]),
            percentile=None if pct is None else float(pct),
            threshold=float(data["threshold"]),
            evidence=tuple(
                Neighbour(
                    uuid.UUID(str(e["image_id"])), uuid.UUID(str(e["listing_id"])), float(str(e["score"]))
                )
                for e in evidence
            ),
            created_at=datetime.fromisoformat(data["created_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"not an alert message: {exc}") from None
