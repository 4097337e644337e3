"""The analytics tables on Cassandra (``schemas/cql/002_analytics.cql``): a mixin of
:class:`store.cassandra.CassandraStore`.

Every statement is a named constant, prepared once per session; a run's rows go out through
``CqlSession.execute_many`` (at most ``concurrency`` in flight, failed ones retried, errors mapped to
``StoreUnavailable`` / ``StoreError``), in chunks so a million-image run never holds millions of
bound statements. A run is written under its own run_id while its status is 'running'; serving it
takes two steps, in order: a lightweight transaction marks it complete only if it is still running
(a failed or completed run cannot complete again), then the single-row write of
``analytics_current`` switches the served run, atomically for readers. A run that fails or is
interrupted before that write is never served: the previous one stays current.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

import numpy as np

from schemas.analytics import (
    NO_GROUP,
    AnalysisResult,
    ClusterInfo,
    DuplicateGroup,
    ImageAnalysis,
    RunInfo,
    ScoredImage,
    ScoreKind,
    Thresholds,
)
from store.analytics import (
    CENTRAL_KEPT,
    bucket,
    central_rows,
    group_images_json,
    nearest_json,
    neighbours_json,
    parse_group_images,
    parse_nearest,
    parse_neighbours,
    run_fields_json,
    run_from_fields,
)
from store.base import StoreError, f32
from store.cassandra_schema import utc
from store.cassandra_session import CqlSession, Row

BUCKETS = 256  # analytics_assignments partitions per run: the image id's first byte
CHUNK = 20_000  # bound statements built at a time

_RUN_COLUMNS = "run_id, model, params, started, finished, status, counts, timings, knn_recall"
_IMAGE_COLUMNS = (
    "image_id, listing_id, cluster_id, similarity, x, y, outlier, outlier_pct, misfit, misfit_pct, group_id"
)
INSERT_RUN = (
    "INSERT INTO analytics_runs (run_id, model, params, started, status, counts, timings) "
    "VALUES (?, ?, ?, ?, 'running', ?, ?)"
)
COMPLETE_RUN = (
    "UPDATE analytics_runs SET status = 'complete', finished = ?, params = ?, counts = ?, timings = ?, "
    "knn_recall = ?, thresholds = ? WHERE run_id = ? IF status = 'running'"
)
FAIL_RUN = "UPDATE analytics_runs SET status = 'failed', finished = ?, error = ? WHERE run_id = ?"
SELECT_RUN = f"SELECT {_RUN_COLUMNS} FROM analytics_runs WHERE run_id = ?"
SELECT_RUNS = f"SELECT {_RUN_COLUMNS} FROM analytics_runs"
SELECT_RUN_STATE = "SELECT status, thresholds FROM analytics_runs WHERE run_id = ?"
SWITCH_CURRENT = "INSERT INTO analytics_current (model, run_id, switched_at) VALUES (?, ?, ?)"
SELECT_CURRENT = "SELECT run_id FROM analytics_current WHERE model = ?"
INSERT_CLUSTER = (
    "INSERT INTO analytics_clusters (run_id, cluster_id, size, cohesion, medoid_image_id, nearest, centroid) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SELECT_CLUSTERS = (
    "SELECT cluster_id, size, cohesion, medoid_image_id, nearest FROM analytics_clusters WHERE run_id = ?"
)
SELECT_CENTROIDS = "SELECT cluster_id, centroid FROM analytics_clusters WHERE run_id = ?"
INSERT_ASSIGNMENT = (
    f"INSERT INTO analytics_assignments (run_id, bucket, {_IMAGE_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_BUCKET = f"SELECT {_IMAGE_COLUMNS} FROM analytics_assignments WHERE run_id = ? AND bucket = ?"
SELECT_BUCKET_TOP = SELECT_BUCKET + " LIMIT ?"
SELECT_IMAGE = SELECT_BUCKET + " AND image_id = ?"
INSERT_MEMBER = (
    "INSERT INTO analytics_cluster_members (run_id, cluster_id, image_id, listing_id, similarity) "
    "VALUES (?, ?, ?, ?, ?)"
)
SELECT_MEMBERS = (
    "SELECT image_id, similarity FROM analytics_cluster_members WHERE run_id = ? AND cluster_id = ?"
)
INSERT_CENTRAL = (
    "INSERT INTO analytics_cluster_central (run_id, cluster_id, rank, image_id, listing_id, similarity) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
SELECT_CENTRAL = "SELECT cluster_id, rank, image_id FROM analytics_cluster_central WHERE run_id = ?"
INSERT_SCORE = (
    "INSERT INTO analytics_scores (run_id, kind, score, image_id, listing_id, percentile, neighbours) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SELECT_SCORES = (
    "SELECT score, image_id, listing_id, percentile, neighbours FROM analytics_scores "
    "WHERE run_id = ? AND kind = ? LIMIT ?"
)
SELECT_SCORE_EVIDENCE = (
    "SELECT neighbours FROM analytics_scores WHERE run_id = ? AND kind = ? AND score = ? AND image_id = ?"
)
INSERT_DUPLICATE = (
    "INSERT INTO analytics_duplicates (run_id, group_id, cross_listing, medoid_image_id, images) "
    "VALUES (?, ?, ?, ?, ?)"
)
SELECT_DUPLICATES = (
    "SELECT group_id, cross_listing, medoid_image_id, images FROM analytics_duplicates WHERE run_id = ?"
)

Request = tuple[str, Sequence[object]]


def _uuid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(raw).ljust(16, b"\0"))


def _opt(v: float) -> float | None:
    return None if np.isnan(v) else f32(v)


def _run(row: Row) -> RunInfo:
    rid, model, params, started, finished, status, counts, timings, recall = row
    return run_from_fields(
        rid,
        str(model),
        params or "{}",
        utc(started) if started is not None else datetime.now(UTC),
        utc(finished) if finished is not None else None,
        str(status),
        counts or "{}",
        timings or "{}",
        None if recall is None else float(recall),
    )


def _image(row: Row, run_id: uuid.UUID) -> ImageAnalysis:
    iid, lid, c, sim, x, y, out, out_pct, mis, mis_pct, group = row
    return ImageAnalysis(
        image_id=iid,
        listing_id=lid,
        run_id=run_id,
        cluster_id=int(c),
        cluster_similarity=float(sim),
        outlier_score=float(out),
        outlier_percentile=float(out_pct),
        misfit_score=None if mis is None else float(mis),
        misfit_percentile=None if mis_pct is None else float(mis_pct),
        duplicate_group_id=None if group in (None, NO_GROUP) else int(group),
        x=float(x),
        y=float(y),
    )


def _chunks(requests: Iterable[Request], size: int = CHUNK) -> Iterator[list[Request]]:
    chunk: list[Request] = []
    for r in requests:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class CassandraAnalytics:
    """Runs, clusters, per-image results, top scores and duplicate groups in Cassandra."""

    _cql: CqlSession

    def _write_all(self, requests: Iterable[Request]) -> None:
        for chunk in _chunks(requests):
            self._cql.execute_many(chunk, write=True)

    # -- writes ---------------------------------------------------------------------------
    def start_run(self, run: RunInfo) -> None:
        params, counts, timings = run_fields_json(run)
        self._cql.execute(
            INSERT_RUN, (run.run_id, run.model, params, run.started_at, counts, timings), write=True
        )

    def write_result(self, result: AnalysisResult) -> None:
        """Everything but the switch: idempotent inserts under the run's id (retries are safe)."""
        rid = result.run.run_id
        self._write_all(
            (
                INSERT_CLUSTER,
                (rid, c.cluster_id, c.size, float(c.cohesion), c.medoid_image_id, nearest_json(c.nearest),
                 np.ascontiguousarray(result.centroids[c.cluster_id], dtype="<f4").tobytes()),
            )
            for c in result.clusters
        )  # fmt: skip
        self._write_all(_assignment_requests(rid, result))
        img = result.images
        self._write_all(
            (
                INSERT_MEMBER,
                (rid, int(img.cluster[i]), _uuid(img.image_ids[i]), _uuid(img.listing_ids[i]),
                 f32(img.similarity[i])),
            )
            for i in range(len(img))
        )  # fmt: skip
        self._write_all(
            (
                INSERT_CENTRAL,
                (rid, c, rank, _uuid(img.image_ids[i]), _uuid(img.listing_ids[i]), f32(img.similarity[i])),
            )
            for c, rank, i in central_rows(img)
        )
        self._write_all(
            (
                INSERT_SCORE,
                (rid, s.kind, f32(s.score), s.image_id, s.listing_id, f32(s.percentile),
                 neighbours_json(s.neighbours)),
            )
            for s in (*result.outliers, *result.misfits)
        )  # fmt: skip
        self._write_all(
            (
                INSERT_DUPLICATE,
                (rid, g.group_id, g.cross_listing, g.medoid_image_id, group_images_json(g.images)),
            )
            for g in result.duplicates
        )

    def complete_run(self, run: RunInfo, centroids: np.ndarray, thresholds: Thresholds) -> None:
        """Mark the run complete if it is still running (a lightweight transaction), then switch
        the served run of its model (one single-row write)."""
        params, counts, timings = run_fields_json(run)
        finished = run.finished_at or datetime.now(UTC)
        state = json.dumps(thresholds.as_json())
        values = (finished, params, counts, timings, run.knn_recall, state, run.run_id)
        # not idempotent for the driver: a retried LWT that had applied reports not applied,
        # so that case is told apart by reading the row back
        row = self._cql.execute(COMPLETE_RUN, values, write=True, idempotent=False).one()
        if not bool(row[0]):
            current = self._cql.execute(SELECT_RUN, (run.run_id,)).one()
            ours = current is not None and current[5] == "complete" and current[4] is not None
            if not (ours and utc(current[4]) == _millis(utc(finished))):
                status = "missing" if current is None else current[5]
                raise StoreError(f"run {run.run_id} is not a running run ({status}): it cannot complete")
        self._cql.execute(SWITCH_CURRENT, (run.model, run.run_id, finished), write=True)

    def fail_run(self, run_id: uuid.UUID, reason: str) -> None:
        self._cql.execute(FAIL_RUN, (datetime.now(UTC), reason[:2000], run_id), write=True)

    # -- reads ----------------------------------------------------------------------------
    def current_run(self, model: str) -> RunInfo | None:
        row = self._cql.execute(SELECT_CURRENT, (model,)).one()
        return self.get_run(row[0]) if row else None

    def get_run(self, run_id: uuid.UUID) -> RunInfo | None:
        row = self._cql.execute(SELECT_RUN, (run_id,)).one()
        return _run(row) if row else None

    def list_runs(self, model: str | None = None, limit: int = 20) -> list[RunInfo]:
        """A scan of the (small) runs table, newest first."""
        runs = [_run(r) for r in self._cql.rows(SELECT_RUNS)]
        if model:
            runs = [r for r in runs if r.model == model]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)[:limit]

    def run_model_state(self, run_id: uuid.UUID) -> tuple[np.ndarray, Thresholds] | None:
        row = self._cql.execute(SELECT_RUN_STATE, (run_id,)).one()
        if row is None or row[0] != "complete" or not row[1]:
            return None
        blobs = sorted(self._cql.rows(SELECT_CENTROIDS, (run_id,)), key=lambda r: int(r[0]))
        if not blobs:
            return None
        centroids = np.stack([np.frombuffer(b, dtype="<f4") for _, b in blobs]).astype(np.float32)
        return centroids, Thresholds.from_json(json.loads(row[1]))

    def read_clusters(self, run_id: uuid.UUID) -> list[ClusterInfo]:
        rows = self._cql.rows(SELECT_CLUSTERS, (run_id,))  # clustering order: cluster_id
        return [ClusterInfo(int(c), int(s), float(h), m, parse_nearest(n)) for c, s, h, m, n in rows]

    def cluster_members(self, run_id: uuid.UUID, cluster_id: int) -> list[uuid.UUID]:
        rows = self._cql.rows(SELECT_MEMBERS, (run_id, cluster_id))
        return [i for i, _ in sorted(rows, key=lambda r: (-float(r[1]), r[0].bytes))]

    def central_members(self, run_id: uuid.UUID, n: int) -> dict[int, list[uuid.UUID]]:
        """One partition, in clustering order (cluster_id, rank): every cluster's kept members."""
        if not 0 <= n <= CENTRAL_KEPT:
            raise ValueError(f"n must be in [0, {CENTRAL_KEPT}], got {n}")
        found: dict[int, list[uuid.UUID]] = {}
        if n == 0:
            return found
        for cluster_id, rank, image_id in self._cql.rows(SELECT_CENTRAL, (run_id,)):
            if int(rank) < n:
                found.setdefault(int(cluster_id), []).append(image_id)
        return found

    def read_assignments(self, run_id: uuid.UUID, limit: int | None = None) -> list[ImageAnalysis]:
        """Every bucket read concurrently (a LIMIT on each when ``limit`` is given)."""
        if limit is not None:
            requests: list[Request] = [(SELECT_BUCKET_TOP, (run_id, b, limit)) for b in range(BUCKETS)]
            results = self._cql.execute_many(requests, write=False)
            out = [_image(row, run_id) for rs in results for row in rs.current_rows]
            return out[:limit]
        out = []
        for b in range(BUCKETS):  # each bucket paged through: a bucket may be large
            out.extend(_image(row, run_id) for row in self._cql.rows(SELECT_BUCKET, (run_id, b)))
        return out

    def image_analysis(self, run_id: uuid.UUID, image_id: uuid.UUID) -> ImageAnalysis | None:
        row = self._cql.execute(SELECT_IMAGE, (run_id, bucket(image_id.bytes), image_id)).one()
        if row is None:
            return None
        found = _image(row, run_id)
        ev = self._cql.execute(
            SELECT_SCORE_EVIDENCE, (run_id, "catalogue", f32(found.outlier_score), image_id)
        ).one()
        if ev:
            found = dataclasses.replace(found, neighbours=parse_neighbours(ev[0]))
        return found

    def top_scores(self, run_id: uuid.UUID, kind: ScoreKind, limit: int = 50) -> list[ScoredImage]:
        rows = self._cql.execute(SELECT_SCORES, (run_id, kind, limit)).current_rows  # one slice, sorted
        return [
            ScoredImage(kind, i, lid, float(s), float(p), parse_neighbours(n)) for s, i, lid, p, n in rows
        ]

    def read_duplicates(self, run_id: uuid.UUID, cross_listing: bool | None = None) -> list[DuplicateGroup]:
        rows = self._cql.rows(SELECT_DUPLICATES, (run_id,))  # clustering order: group_id
        return [
            DuplicateGroup(int(g), bool(c), m, parse_group_images(t))
            for g, c, m, t in rows
            if cross_listing is None or bool(c) == cross_listing
        ]


def _millis(t: datetime) -> datetime:
    """A timestamp as Cassandra keeps it (milliseconds)."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _assignment_requests(rid: uuid.UUID, result: AnalysisResult) -> Iterator[Request]:
    img = result.images
    for i in range(len(img)):
        iid = bytes(img.image_ids[i]).ljust(16, b"\0")
        yield (
            INSERT_ASSIGNMENT,
            (
                rid, bucket(iid), uuid.UUID(bytes=iid), _uuid(img.listing_ids[i]), int(img.cluster[i]),
                f32(img.similarity[i]), f32(img.x[i]), f32(img.y[i]), f32(img.outlier[i]),
                f32(img.outlier_pct[i]), _opt(float(img.misfit[i])), _opt(float(img.misfit_pct[i])),
                int(img.group[i]),
            ),
        )  # fmt: skip
