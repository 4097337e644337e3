"""``lookalike analyze``, ``clusters``, ``outliers``, ``duplicates``: catalogue analytics from the shell.

Registered on the main app by :func:`register`."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

import typer
from rich.table import Table

from lookalike.terminal import console, fail, settings_of
from schemas.analytics import RunInfo, clusters_json, duplicates_json, scored_json

Kind = Literal["catalogue", "listing"]


def _store_and_run(ctx: typer.Context, run_id: str | None, model: str | None):  # type: ignore[no-untyped-def]
    from analytics.run import analytics_store
    from lookalike import stack

    settings = settings_of(ctx)
    store = stack.configured_store(settings)
    target = analytics_store(store)
    if run_id:
        try:
            rid = uuid.UUID(run_id)
        except ValueError:
            fail(f"--run must be a UUID, got {run_id!r}")
        run = target.get_run(rid)
        if run is None or run.status != "complete":
            fail(f"no complete analytics run {run_id} (see `lookalike analyze`)")
    else:
        name = model or stack.model_name(settings)
        run = target.current_run(name)
        if run is None:
            fail(f"no analytics run of model {name!r} yet: run `lookalike analyze` first")
    return store, target, run


def analyze(
    ctx: typer.Context,
    engine: Annotated[
        str | None,
        typer.Option(help="local (FAISS, one machine) or spark; default LOOKALIKE_ANALYTICS_ENGINE"),
    ] = None,
    clusters: Annotated[int, typer.Option(help="k-means clusters; 0: about sqrt(images / 2)")] = -1,
    model: Annotated[str | None, typer.Option(help="model whose vectors to analyse")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
) -> None:
    """Cluster the catalogue, score outliers and listing misfits, find near-duplicates; record the run."""
    from analytics.run import run_local, run_spark
    from lookalike import stack
    from store import StoreError

    settings = settings_of(ctx)
    analytics = settings.analytics
    if clusters >= 0:
        analytics = analytics.model_copy(update={"clusters": clusters})
    engine = engine or analytics.engine
    if engine not in ("local", "spark"):
        fail(f"--engine must be local or spark, got {engine!r}")
    store = stack.configured_store(settings)
    name = model or stack.model_name(settings)
    try:
        if engine == "spark":
            result = run_spark(store, name, analytics, settings.spark, progress=not as_json)
        else:
            result = run_local(store, name, analytics, progress=not as_json)
    except (ValueError, StoreError) as exc:
        fail(str(exc))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(result.run.as_json()))
    else:
        _print_run(result.run)


def _print_run(run: RunInfo) -> None:
    table = Table(title=f"analytics run {run.run_id} ({run.model})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, count in run.counts.items():
        table.add_row(name, str(count))
    table.add_row("kNN recall@10", "-" if run.knn_recall is None else f"{run.knn_recall:.3f}")
    for k, v in run.timings.items():
        if k.endswith("_s"):
            table.add_row(k, f"{v:.2f}")
    console.print(table)


def clusters(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Option("--run", help="run id; default: the served run")] = None,
    members: Annotated[bool, typer.Option("--members", help="list each cluster's images")] = False,
    model: Annotated[str | None, typer.Option(help="model of the served run")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The clusters of a run: size, cohesion, medoid image, nearest clusters."""
    store, target, info = _store_and_run(ctx, run, model)
    found = target.read_clusters(info.run_id)
    listed = (
        {c.cluster_id: target.cluster_members(info.run_id, c.cluster_id) for c in found} if members else None
    )
    store.close()
    if as_json:
        typer.echo(json.dumps(clusters_json(info.run_id, found, listed)))
        return
    table = Table(title=f"clusters of run {info.run_id}")
    for col in ("cluster", "size", "cohesion", "medoid image", "nearest"):
        table.add_column(col)
    for c in found:
        near = ", ".join(f"{j} ({s:.2f})" for j, s in c.nearest)
        table.add_row(str(c.cluster_id), str(c.size), f"{c.cohesion:.3f}", str(c.medoid_image_id), near)
    console.print(table)


def outliers(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="catalogue (outliers) or listing (misfits)")] = "catalogue",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    run: Annotated[str | None, typer.Option("--run")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The strangest images, worst first: catalogue outliers or images that do not fit their listing."""
    if kind not in ("catalogue", "listing"):
        fail(f"--kind must be catalogue or listing, got {kind!r}")
    store, target, info = _store_and_run(ctx, run, model)
    found = target.top_scores(info.run_id, kind, limit)
    store.close()
    if as_json:
        typer.echo(json.dumps(scored_json(found)))
        return
    table = Table(title=f"{kind} {'outliers' if kind == 'catalogue' else 'misfits'} of run {info.run_id}")
    for col in ("image", "listing", "score", "percentile", "nearest"):
        table.add_column(col)
    for s in found:
        near = ", ".join(f"{str(n.image_id)[:8]} ({n.score:.2f})" for n in s.neighbours[:3])
        table.add_row(str(s.image_id), str(s.listing_id), f"{s.score:.4f}", f"{s.percentile:.2f}", near)
    console.print(table)


def duplicates(
    ctx: typer.Context,
    cross_listing: Annotated[bool | None, typer.Option("--cross-listing/--within-listing")] = None,
    run: Annotated[str | None, typer.Option("--run")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Near-duplicate groups: cross-listing groups first."""
    store, target, info = _store_and_run(ctx, run, model)
    groups = target.read_duplicates(info.run_id, cross_listing)
    names = store.listing_names(sorted({lid for g in groups for _, lid in g.images}, key=str))
    store.close()
    if as_json:
        typer.echo(json.dumps(duplicates_json(groups, names)))
        return
    table = Table(title=f"near-duplicate groups of run {info.run_id}")
    for col in ("group", "cross-listing", "images (listing)"):
        table.add_column(col)
    for g in groups:
        images = ", ".join(f"{str(i)[:8]} ({names.get(lid, str(lid)[:8])})" for i, lid in g.images)
        table.add_row(str(g.group_id), "yes" if g.cross_listing else "no", images)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the analytics commands to the ``lookalike`` app."""
    app.command("analyze")(analyze)
    app.command("clusters")(clusters)
    app.command("outliers")(outliers)
    app.command("duplicates")(duplicates)
