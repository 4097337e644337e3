"""``lookalike models`` and ``lookalike reembed``: models side by side.

``reembed --model NAME`` backfills a model from the kept pixels through the normal pipeline:
for every stored image without a ``NAME`` vector it produces a *reference* to its pixels (the
blob URI in ``images.uri``) on ``lookalike.images.NAME`` with a ``model: NAME`` header. Only
workers that loaded ``NAME`` consume that topic (a worker subscribes to the images topic and to
its own model's topic), so the workers serving today's model never see the backfill. It is
resumable and idempotent (images that have a ``NAME`` vector are skipped; ids are the images'
own), and throttled (``--rate`` references per second) so that the backfill queue stays short
and fresh uploads keep flowing beside it. Registered on the main app by :func:`register`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings
from lookalike.terminal import console, err, fail, settings_of
from messaging.producer import KafkaProducer
from schemas.messages import URI_LIST, ImageMessage, model_topic
from schemas.records import ImageRecord, ModelInfo
from store import Store
from store.blobs import BlobStore
from store.models import check_weights, list_models, model_coverage, register_model

REFERENCE_SCHEMES = ("file", "http", "https")  # what a worker can read without the blob store


@dataclass
class ReembedReport:
    model: str
    topic: str
    images: int = 0  # scanned
    present: int = 0  # already had a vector of the model: skipped
    produced: int = 0  # references produced
    unkept: int = 0  # no pixels to read (uploads from before pixels were kept)


class Throttle:
    """At most ``rate`` events per second (0: no limit), smoothed over a one-second burst."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self._sleep = rate, sleep
        self._allowance, self._at = rate, time.monotonic()

    def take(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._at) * self.rate)
        self._at = now
        if self._allowance < 1:
            self._sleep((1 - self._allowance) / self.rate)
            self._allowance, self._at = 1.0, time.monotonic()
        self._allowance -= 1


def pixels_reference(record: ImageRecord, blobs: BlobStore | None) -> str | None:
    """Where a worker reads the image's pixels: its blob (or a file/http source); None when
    they were never kept (an upload extracted before the blob store)."""
    if blobs is not None and blobs.owns(record.uri):
        return record.uri
    return record.uri if urllib.parse.urlsplit(record.uri).scheme in REFERENCE_SCHEMES else None


def reembed(
    store: Store,
    producer: KafkaProducer,
    images_topic: str,
    info: ModelInfo,
    blobs: BlobStore | None,
    *,
    rate: float = 0,
    batch_size: int = 500,
    limit: int | None = None,
    on_batch: Callable[[ReembedReport], None] | None = None,
    stop: threading.Event | None = None,
) -> ReembedReport:
    """Produce a reference for every stored image without a vector of ``info`` (see the module
    docstring). Refuses (StoreError) when the store holds ``info.name`` vectors of other weights."""
    check_weights(store, info)
    register_model(store, info)  # listed by `lookalike models` from now on, at its coverage
    report = ReembedReport(info.name, model_topic(images_topic, info.name))
    throttle = Throttle(rate)
    for page in store.scan_images(batch_size):
        if stop is not None and stop.is_set():
            break
        report.images += len(page)
        present = store.existing_images([r.image_id for r in page], info.name)
        todo = [r for r in page if r.image_id not in present]
        report.present += len(page) - len(todo)
        names = store.listing_names(list({r.listing_id for r in todo}))
        for record in todo:
            if limit is not None and report.produced >= limit:
                break
            ref = pixels_reference(record, blobs)
            if ref is None:
                report.unkept += 1
                continue
            throttle.take()
            name = names.get(record.listing_id, "")
            m = ImageMessage(
                record.listing_id, record.image_id, name, URI_LIST, ref, ref.encode(), model=info.name
            )
            producer.send(report.topic, m.key(), m.payload, m.headers())
            report.produced += 1
        producer.flush()
        if on_batch is not None:
            on_batch(report)
        if limit is not None and report.produced >= limit:
            break
    producer.flush()
    return report


def target_model(settings: Settings, name: str) -> ModelInfo:
    """What the workers of ``name`` will record (its weights' checksum): the model is loaded
    here, as a worker would, so a mismatch is refused before anything is produced."""
    from extract.model import SPECS
    from lookalike import stack

    if name not in SPECS:
        raise typer.BadParameter(f"unknown model {name!r}; known: {', '.join(SPECS)}", param_hint="--model")
    model_settings = settings.model.model_copy(update={"name": name})
    return stack.configured_model(replace(settings, model=model_settings)).info


def models_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the store's models: dimension, dtype, weights checksum, vectors, coverage."""
    from lookalike import stack
    from store import StoreError

    settings = settings_of(ctx)
    try:
        store = stack.configured_store(settings)
        found = list_models(store)
        served = stack.model_name(settings)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        rows = [{**m.as_json(), "served": m.info.name == served} for m in found]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Models in the store")
    for col in ("model", "dim", "dtype", "weights", "vectors", "images", "coverage", "served"):
        table.add_column(col, justify="right" if col in ("dim", "vectors", "images", "coverage") else "left")
    for m in found:
        i = m.info
        weights = i.weights if len(i.weights) <= 23 else i.weights[:23] + "…"
        mark = "yes" if i.name == served else ""
        table.add_row(
            i.name, str(i.dim), i.dtype, weights, str(m.vectors), str(m.images), f"{m.coverage:.1%}", mark
        )
    console.print(table if found else "no models yet: run `lookalike extract`")


def reembed_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="the model to backfill (LOOKALIKE_MODEL_NAME of its workers)")],
    rate: Annotated[float, typer.Option(min=0, help="references produced per second; 0: no limit")] = 200,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="images read from the store at once")] = 500,
    limit: Annotated[int | None, typer.Option(min=1, help="produce at most this many references")] = None,
    wait: Annotated[bool, typer.Option(help="then follow coverage until complete (Ctrl-C stops)")] = False,
) -> None:
    """Re-extract every stored image with another model, from its kept pixels, through the workers."""
    from extract.model import WeightsMissing
    from lookalike import stack
    from messaging.admin import ensure_topics
    from messaging.errors import MessagingError
    from store import StoreError

    settings = settings_of(ctx)
    kafka = settings.kafka
    try:
        info = target_model(settings, model)
        conf = kafka.client_config()
        store = stack.configured_store(settings)
        blobs = stack.configured_blobs(settings)
        topic = model_topic(kafka.images_topic, info.name)
        ensure_topics(conf, [topic], kafka.partitions, kafka.replication)
        total = store.count("images")
        with _progress() as progress, KafkaProducer(conf, kafka.max_message_bytes) as producer:
            queued = progress.add_task("queued", total=total)
            covered = progress.add_task(f"coverage {info.name}", total=total)
            last_poll = [0.0]

            def show(report: ReembedReport) -> None:
                progress.update(queued, completed=report.present + report.produced + report.unkept)
                if time.monotonic() - last_poll[0] > 2:  # counting is a scan on Cassandra
                    progress.update(covered, completed=store.count_features(info))
                    last_poll[0] = time.monotonic()

            report = reembed(
                store, producer, kafka.images_topic, info, blobs, rate=rate, batch_size=batch, limit=limit,
                on_batch=show,
            )  # fmt: skip
            progress.update(covered, completed=store.count_features(info))
            if wait:
                _follow_coverage(store, info, progress, covered)
    except typer.BadParameter:
        raise
    except (StoreError, WeightsMissing, MessagingError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    console.print(
        f"{report.produced} references produced to {report.topic}; {report.present} images already had "
        f"a {info.name} vector; {report.unkept} without kept pixels (re-ingest them)"
    )
    cov = model_coverage(store, info)
    console.print(f"coverage of {info.name}: {cov.vectors}/{cov.images} ({cov.coverage:.1%})")
    if not cov.complete and not wait:
        console.print(
            f"workers of {info.name} (consumer group {kafka.extract_group(info.name)}) embed them:\n"
            f"  LOOKALIKE_MODEL_NAME={info.name} lookalike extract"
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _follow_coverage(store: Store, info: ModelInfo, progress: Progress, task: TaskID) -> None:
    try:
        while True:
            cov = model_coverage(store, info)
            progress.update(task, completed=cov.vectors, total=cov.images)
            if cov.complete:
                return
            time.sleep(2)
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
    app.command("reembed")(reembed_command)
