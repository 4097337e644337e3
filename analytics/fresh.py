"""Scoring images that arrive between runs, against the served run, and alerting on them.

An arrival gets what a run would say about it, by the definitions of :mod:`analytics.definitions`:
its nearest centroid (cluster), its catalogue outlier score (1 - similarity to the k-th nearest
image of *other* listings, found in the live index) with its percentile against the run's
stored quantiles, its listing misfit, and the images of other listings at or above the run's
duplicate similarity. A cross-listing duplicate, or an outlier at or past the run's alert
percentile, becomes an :class:`schemas.alerts.Alert` on ``lookalike.alerts``.

:class:`FreshScorer` is an observer of the index follower (``search.follow.ChangeObserver``):
the roof hands it to the follower, so search never imports analytics.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from messaging.errors import MessagingError
from messaging.producer import KafkaProducer
from schemas.alerts import Alert
from schemas.analytics import ImageAnalysis, Neighbour, RunInfo, Thresholds
from schemas.records import FeatureBatch, as_uuid, utcnow
from search.engine import UnknownId
from search.follow import Changes
from search.scoring import ScoreOptions
from search.tier import SearchIndex
from store import StoreError
from store.analytics import AnalyticsStore

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
EVIDENCE = 5  # nearest images of other listings kept as evidence


@dataclass(frozen=True)
class RunState:
    """What scoring against a complete run needs: the run, its centroids and thresholds."""

    run: RunInfo
    centroids: F32
    thresholds: Thresholds


@dataclass(frozen=True)
class Arrival:
    """A new image scored against a run: what the run would say, and its cross-listing duplicates."""

    analysis: ImageAnalysis  # x, y and duplicate group are None: a run places images, not arrivals
    duplicates: tuple[Neighbour, ...]  # images of other listings at or above the duplicate similarity

    def as_json(self) -> dict[str, object]:
        return self.analysis.as_json() | {
            "fresh": True,
            "duplicates": [n.as_json() for n in self.duplicates],
        }


def load_state(store: AnalyticsStore, model: str) -> RunState | None:
    """The served run of ``model`` with its centroids and thresholds; None before the first run."""
    run = store.current_run(model)
    if run is None:
        return None
    found = store.run_model_state(run.run_id)
    if found is None:
        return None
    centroids, thresholds = found
    return RunState(run, np.asarray(centroids, dtype=np.float32), thresholds)


def score_arrivals(index: SearchIndex, state: RunState, batch: FeatureBatch) -> list[Arrival]:
    """Score each row of ``batch`` (already in ``index``, or not) against the run in ``state``.

    The k-th nearest image of other listings is exact on an exact index (approximate on an
    approximate one): the top k listings by their best image, with up to k matches each, hold
    every image among the k nearest."""
    if len(batch) == 0:
        return []
    t = state.thresholds
    vectors = np.asarray(batch.vectors, dtype=np.float32)
    clusters, sims = d.assign(vectors, state.centroids)
    k = max(t.outlier_k, EVIDENCE)
    opts = ScoreOptions(k=k, aggregation="max", max_matches=k)
    out: list[Arrival] = []
    for row in range(len(batch)):
        listing = as_uuid(batch.listing_ids[row])
        image = as_uuid(batch.image_ids[row])
        ranked = index.search(vectors[row], opts, exclude=[listing])
        near = sorted(
            ((s, i, r.listing_id) for r in ranked for i, s in r.matches if i != image),
            key=lambda m: (-m[0], m[1].bytes),
        )
        kth = near[t.outlier_k - 1][0] if len(near) >= t.outlier_k else -1.0
        outlier = float(d.outlier_scores(np.array([kth], np.float32))[0])
        misfit = _misfit(index, listing, vectors[row])
        analysis = ImageAnalysis(
            image_id=image,
            listing_id=listing,
            run_id=state.run.run_id,
            cluster_id=int(clusters[row]),
            cluster_similarity=float(sims[row]),
            outlier_score=outlier,
            outlier_percentile=t.percentile("catalogue", outlier),
            misfit_score=misfit,
            misfit_percentile=None
            if misfit is None or not t.listing_quantiles
            else t.percentile("listing", misfit),
            neighbours=tuple(Neighbour(i, lid, s) for s, i, lid in near[:EVIDENCE]),
        )
        duplicates = tuple(Neighbour(i, lid, s) for s, i, lid in near if s >= t.duplicate_similarity)
        out.append(Arrival(analysis, duplicates))
    return out


def _misfit(index: SearchIndex, listing: uuid.UUID, x: F32) -> float | None:
    """1 - cosine(x, mean of the listing's other images in the index); None under 3 images."""
    try:
        rows = index.listing_vectors(listing)
    except UnknownId:  # the listing is not (or no longer) in the index
        return None
    same = np.flatnonzero(np.abs(rows @ x - 1.0) < 1e-3)  # x itself, when the index holds it
    others = np.delete(rows, same[:1], axis=0)
    if len(others) + 1 < d.MISFIT_MIN_IMAGES:
        return None
    rest = others.sum(axis=0)
    norm = float(np.linalg.norm(rest))
    return 1.0 if norm <= 1e-12 else float(1.0 - (x @ rest) / norm)


def alerts_for(arrival: Arrival, state: RunState) -> list[Alert]:
    """The alerts an arrival raises: a cross-listing duplicate, a strong outlier."""
    a, t, now = arrival.analysis, state.thresholds, utcnow()
    out = []
    if arrival.duplicates:
        out.append(
            Alert("cross_listing_duplicate", a.listing_id, a.image_id, state.run.model, state.run.run_id,
                  arrival.duplicates[0].score, None, t.duplicate_similarity, arrival.duplicates, now)
        )  # fmt: skip
    if a.outlier_percentile >= t.alert_percentile:
        out.append(
            Alert("outlier", a.listing_id, a.image_id, state.run.model, state.run.run_id,
                  a.outlier_score, a.outlier_percentile, t.alert_percentile, a.neighbours, now)
        )  # fmt: skip
    return out


class AlertPublisher:
    """Sends alerts to the alerts topic, keyed by listing; waits for the broker once per batch."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def __call__(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self.producer.send(self.topic, alert.key(), alert.value(), alert.headers())
        if alerts:
            self.producer.flush(10.0)

    def close(self) -> None:
        self.producer.close()


class FreshScorer:
    """An index-follower observer: scores what arrived against the served run and alerts.

    The served run is re-read at most every ``refresh_s`` (a new run takes over without a
    restart). Images the served run already holds are not scored again."""

    def __init__(
        self,
        store: AnalyticsStore,
        model: str,
        publish: Callable[[Sequence[Alert]], None] | None = None,
        refresh_s: float = 30.0,
    ) -> None:
        self.store, self.model, self.publish, self.refresh_s = store, model, publish, refresh_s
        self._state: RunState | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.scored = 0
        self.alerts_sent = 0
        self.last: list[Arrival] = []  # the last batch scored (for logs and tests)

    def state(self) -> RunState | None:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.refresh_s:
                current = self.store.current_run(self.model)
                if current is None:
                    self._state = None
                elif self._state is None or self._state.run.run_id != current.run_id:
                    self._state = load_state(self.store, self.model)
                self._checked = now
            return self._state

    def __call__(self, index: SearchIndex, changes: Changes) -> None:
        if len(changes.upserts) == 0:
            return
        try:
            state = self.state()
            if state is None:
                return  # no run yet: nothing to score against
            batch = self._not_in_run(changes.upserts, state.run.run_id)
            arrivals = score_arrivals(index, state, batch)
        except StoreError as exc:
            log.warning("fresh scoring skipped %d arrivals: %s", len(changes.upserts), exc)
            return
        self.scored += len(arrivals)
        self.last = arrivals
        alerts = [alert for a in arrivals for alert in alerts_for(a, state)]
        if not alerts or self.publish is None:
            return
        try:
            self.publish(alerts)
            self.alerts_sent += len(alerts)
        except MessagingError as exc:
            log.warning("%d alerts not delivered: %s", len(alerts), exc)
        for alert in alerts:
            log.info("alert %s: image %s of listing %s", alert.reason, alert.image_id, alert.listing_id)

    def close(self) -> None:
        """Deliver what is queued and let go of the alert producer."""
        close = getattr(self.publish, "close", None)
        if close is not None:
            close()
        self.publish = None

    def _not_in_run(self, batch: FeatureBatch, run_id: uuid.UUID) -> FeatureBatch:
        keep = np.array(
            [self.store.image_analysis(run_id, as_uuid(i)) is None for i in batch.image_ids], dtype=bool
        )
        return FeatureBatch(batch.listing_ids[keep], batch.image_ids[keep], batch.vectors[keep])
