"""The analytics tables on SQLite: a mixin of :class:`store.sqlite.SQLiteStore`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

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

_RUN_COLUMNS = "run_id, model, params, started, finished, status, counts, timings, knn_recall"
_IMAGE_COLUMNS = (
    "image_id, listing_id, cluster_id, similarity, x, y, outlier, outlier_pct, misfit, misfit_pct, group_id"
)


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _run(row: tuple[Any, ...]) -> RunInfo:
    rid, model, params, started, finished, status, counts, timings, recall = row
    start = _ts(str(started)) or datetime.now(UTC)
    return run_from_fields(
        uuid.UUID(bytes=bytes(rid)),
        str(model),
        str(params),
        start,
        _ts(finished),
        str(status),
        str(counts),
        str(timings),
        None if recall is None else float(recall),
    )


def _image(row: tuple[Any, ...], run_id: uuid.UUID) -> ImageAnalysis:
    iid, lid, c, sim, x, y, out, out_pct, mis, mis_pct, group = row
    return ImageAnalysis(
        image_id=uuid.UUID(bytes=bytes(iid)),
        listing_id=uuid.UUID(bytes=bytes(lid)),
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


def _opt(v: float) -> float | None:
    return None if np.isnan(v) else f32(v)


class SQLiteAnalytics:
    """Runs, clusters, per-image results, top scores and duplicate groups in the SQLite file."""

    _write: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]
    _read: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]

    def start_run(self, run: RunInfo) -> None:
        params, counts, timings = run_fields_json(run)
        with self._write() as db:
            db.execute(
                f"INSERT INTO analytics_runs ({_RUN_COLUMNS})"
                " VALUES (?, ?, ?, ?, NULL, 'running', ?, ?, NULL)",
                (run.run_id.bytes, run.model, params, run.started_at.isoformat(), counts, timings),
            )

    def write_result(self, result: AnalysisResult) -> None:
        rid = result.run.run_id.bytes
        img = result.images
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO analytics_clusters VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (rid, c.cluster_id, c.size, c.cohesion, c.medoid_image_id.bytes, nearest_json(c.nearest),
                     np.ascontiguousarray(result.centroids[c.cluster_id], dtype="<f4").tobytes())
                    for c in result.clusters
                ],
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO analytics_assignments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _assignment_rows(rid, result),
            )
            db.executemany(
                "INSERT OR REPLACE INTO analytics_cluster_members VALUES (?, ?, ?, ?, ?)",
                (
                    (rid, int(img.cluster[i]), bytes(img.image_ids[i]).ljust(16, b"\0"),
                     bytes(img.listing_ids[i]).ljust(16, b"\0"), f32(img.similarity[i]))
                    for i in range(len(img))
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO analytics_cluster_central VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (rid, c, rank, bytes(img.image_ids[i]).ljust(16, b"\0"),
                     bytes(img.listing_ids[i]).ljust(16, b"\0"), f32(img.similarity[i]))
                    for c, rank, i in central_rows(img)
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO analytics_scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (rid, s.kind, f32(s.score), s.image_id.bytes, s.listing_id.bytes, f32(s.percentile),
                     neighbours_json(s.neighbours))
                    for s in (*result.outliers, *result.misfits)
                ],
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO analytics_duplicates VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        rid,
                        g.group_id,
                        int(g.cross_listing),
                        g.medoid_image_id.bytes,
                        group_images_json(g.images),
                    )
                    for g in result.duplicates
                ],
            )

    def complete_run(self, run: RunInfo, centroids: np.ndarray, thresholds: Thresholds) -> None:
        """One transaction: the run's end and the switch of the served run."""
        params, counts, timings = run_fields_json(run)
        finished = (run.finished_at or datetime.now(UTC)).isoformat()
        with self._write() as db:
            found = db.execute(
                "UPDATE analytics_runs SET status = 'complete', finished = ?, params = ?, counts = ?,"
                " timings = ?, knn_recall = ?, thresholds = ? WHERE run_id = ? AND status = 'running'",
                (finished, params, counts, timings, run.knn_recall, json.dumps(thresholds.as_json()),
                 run.run_id.bytes),
            ).rowcount  # fmt: skip
            if not found:
                raise StoreError(f"run {run.run_id} is not a running run: it cannot complete")
            db.execute(
                "INSERT OR REPLACE INTO analytics_current VALUES (?, ?, ?)",
                (run.model, run.run_id.bytes, finished),
            )

    def fail_run(self, run_id: uuid.UUID, reason: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE analytics_runs SET status = 'failed', finished = ?, error = ? WHERE run_id = ?",
                (datetime.now(UTC).isoformat(), reason[:2000], run_id.bytes),
            )

    def current_run(self, model: str) -> RunInfo | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {', '.join('r.' + c.strip() for c in _RUN_COLUMNS.split(','))}"
                " FROM analytics_current c JOIN analytics_runs r ON r.run_id = c.run_id WHERE c.model = ?",
                (model,),
            ).fetchone()
        return _run(row) if row else None

    def get_run(self, run_id: uuid.UUID) -> RunInfo | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM analytics_runs WHERE run_id = ?", (run_id.bytes,)
            ).fetchone()
        return _run(row) if row else None

    def list_runs(self, model: str | None = None, limit: int = 20) -> list[RunInfo]:
        where, args = ("WHERE model = ?", (model, limit)) if model else ("", (limit,))
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM analytics_runs {where} ORDER BY started DESC LIMIT ?", args
            ).fetchall()
        return [_run(r) for r in rows]

    def run_model_state(self, run_id: uuid.UUID) -> tuple[np.ndarray, Thresholds] | None:
        with self._read() as db:
            row = db.execute(
                "SELECT thresholds FROM analytics_runs WHERE run_id = ? AND status = 'complete'",
                (run_id.bytes,),
            ).fetchone()
            blobs = db.execute(
                "SELECT centroid FROM analytics_clusters WHERE run_id = ? ORDER BY cluster_id",
                (run_id.bytes,),
            ).fetchall()
        if not row or not blobs:
            return None
        centroids = np.stack([np.frombuffer(b[0], dtype="<f4") for b in blobs]).astype(np.float32)
        return centroids, Thresholds.from_json(json.loads(row[0]))

    def read_clusters(self, run_id: uuid.UUID) -> list[ClusterInfo]:
        with self._read() as db:
            rows = db.execute(
                "SELECT cluster_id, size, cohesion, medoid_image_id, nearest FROM analytics_clusters"
                " WHERE run_id = ? ORDER BY cluster_id",
                (run_id.bytes,),
            ).fetchall()
        return [ClusterInfo(c, s, h, uuid.UUID(bytes=m), parse_nearest(n)) for c, s, h, m, n in rows]

    def cluster_members(self, run_id: uuid.UUID, cluster_id: int) -> list[uuid.UUID]:
        with self._read() as db:
            rows = db.execute(
                "SELECT image_id FROM analytics_cluster_members WHERE run_id = ? AND cluster_id = ?"
                " ORDER BY similarity DESC, image_id",
                (run_id.bytes, cluster_id),
            ).fetchall()
        return [uuid.UUID(bytes=r[0]) for r in rows]

    def central_members(self, run_id: uuid.UUID, n: int) -> dict[int, list[uuid.UUID]]:
        if not 0 <= n <= CENTRAL_KEPT:
            raise ValueError(f"n must be in [0, {CENTRAL_KEPT}], got {n}")
        with self._read() as db:
            rows = db.execute(
                "SELECT cluster_id, image_id FROM analytics_cluster_central WHERE run_id = ? AND rank < ?"
                " ORDER BY cluster_id, rank",
                (run_id.bytes, n),
            ).fetchall()
        found: dict[int, list[uuid.UUID]] = {}
        for cluster_id, image_id in rows:
            found.setdefault(int(cluster_id), []).append(uuid.UUID(bytes=image_id))
        return found

    def read_assignments(self, run_id: uuid.UUID, limit: int | None = None) -> list[ImageAnalysis]:
        sql = f"SELECT {_IMAGE_COLUMNS} FROM analytics_assignments WHERE run_id = ?"
        args: tuple[object, ...] = (run_id.bytes,)
        if limit is not None:
            sql, args = sql + " LIMIT ?", (*args, limit)
        with self._read() as db:
            rows = db.execute(sql, args).fetchall()
        return [_image(r, run_id) for r in rows]

    def image_analysis(self, run_id: uuid.UUID, image_id: uuid.UUID) -> ImageAnalysis | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM analytics_assignments"
                " WHERE run_id = ? AND bucket = ? AND image_id = ?",
                (run_id.bytes, bucket(image_id.bytes), image_id.bytes),
            ).fetchone()
            ev = db.execute(
                "SELECT neighbours FROM analytics_scores"
                " WHERE run_id = ? AND kind = 'catalogue' AND image_id = ?",
                (run_id.bytes, image_id.bytes),
            ).fetchone()
        if not row:
            return None
        found = _image(row, run_id)
        if ev:
            found = dataclasses.replace(found, neighbours=parse_neighbours(ev[0]))
        return found

    def top_scores(self, run_id: uuid.UUID, kind: ScoreKind, limit: int = 50) -> list[ScoredImage]:
        with self._read() as db:
            rows = db.execute(
                "SELECT score, image_id, listing_id, percentile, neighbours FROM analytics_scores"
                " WHERE run_id = ? AND kind = ? ORDER BY score DESC, image_id LIMIT ?",
                (run_id.bytes, kind, limit),
            ).fetchall()
        return [
            ScoredImage(kind, uuid.UUID(bytes=i), uuid.UUID(bytes=lid), s, p, parse_neighbours(n))
            for s, i, lid, p, n in rows
        ]

    def read_duplicates(self, run_id: uuid.UUID, cross_listing: bool | None = None) -> list[DuplicateGroup]:
        sql = (
            "SELECT group_id, cross_listing, medoid_image_id, images FROM analytics_duplicates"
            " WHERE run_id = ?"
        )
        args: tuple[object, ...] = (run_id.bytes,)
        if cross_listing is not None:
            sql, args = sql + " AND cross_listing = ?", (*args, int(cross_listing))
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY group_id", args).fetchall()
        return [DuplicateGroup(g, bool(c), uuid.UUID(bytes=m), parse_group_images(t)) for g, c, m, t in rows]


def _assignment_rows(rid: bytes, result: AnalysisResult) -> Iterator[tuple[object, ...]]:
    img = result.images
    for i in range(len(img)):
        iid = bytes(img.image_ids[i]).ljust(16, b"\0")
        yield (
            rid, bucket(iid), iid, bytes(img.listing_ids[i]).ljust(16, b"\0"), int(img.cluster[i]),
            f32(img.similarity[i]), f32(img.x[i]), f32(img.y[i]), f32(img.outlier[i]),
            f32(img.outlier_pct[i]),
            _opt(float(img.misfit[i])), _opt(float(img.misfit_pct[i])), int(img.group[i]),
        )  # fmt: skip
