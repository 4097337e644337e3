"""The ``lookalike`` command: one subcommand per stage, each usable alone."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler

from config.settings import Settings
from lookalike import analytics_cli, models_cli, spark_serve
from lookalike.terminal import console, err, fail, settings_of
from search.scoring import MAX_K, Aggregation

if TYPE_CHECKING:
    from lookalike.demo import DemoResult

app = typer.Typer(no_args_is_help=True, help="Lookalike: find listings that look like a photo.")
schema_app = typer.Typer(no_args_is_help=True, help="Create and inspect the store's tables.")
ingest_app = typer.Typer(no_args_is_help=True, help="Produce images and stock to Kafka.")
app.add_typer(schema_app, name="schema")
features_app = typer.Typer(no_args_is_help=True, help="Vectors computed elsewhere.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(features_app, name="features")


@app.callback()
def _setup(ctx: typer.Context) -> None:
    """Settings are read once here and handed to the command through the context."""
    try:
        ctx.obj = Settings.from_env()
    except ValueError as exc:
        fail(str(exc))
    level = ctx.obj.core.log_level.upper()
    # A terminal gets rich's log lines; a pipe or CI gets plain ones, never wrapped mid-sentence.
    handler: logging.Handler = (
        RichHandler(console=err, show_path=False, rich_tracebacks=True)
        if sys.stderr.isatty()
        else logging.StreamHandler(sys.stderr)
    )
    if not sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler])
    for noisy in ("py4j", "faiss.loader", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@schema_app.command("apply")
def schema_apply(ctx: typer.Context) -> None:
    """Create or migrate the tables (idempotent)."""
    from lookalike import stack

    store = stack.configured_store(settings_of(ctx), apply_schema=False)
    applied = store.apply_schema()
    console.print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


@schema_app.command("show")
def schema_show(ctx: typer.Context) -> None:
    """Print the schema versions applied to the store."""
    from lookalike import stack

    store = stack.configured_store(settings_of(ctx), apply_schema=False)
    versions = store.applied_versions()
    for version, at in versions:
        console.print(f"{version}  applied {at}")
    if not versions:
        console.print("no schema applied yet: run `lookalike schema apply`")


@ingest_app.command("images")
def ingest_images(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="one subfolder per listing, named after it")],
    by_reference: Annotated[bool, typer.Option(help="send file:// references, not bytes")] = False,
    skip_bad: Annotated[bool, typer.Option(help="skip non-image files instead of failing")] = False,
) -> None:
    """Produce every image of a folder to the images topic (stable ids: re-sending is harmless)."""
    from ingest.catalogue import CatalogueError, scan_folder
    from ingest.producer import image_messages, send_images
    from messaging.errors import MessageTooLarge
    from messaging.producer import KafkaProducer

    kafka = settings_of(ctx).kafka
    try:
        catalogue = scan_folder(folder, skip_bad=skip_bad)
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            n = send_images(
                producer, kafka.images_topic, image_messages(catalogue, by_reference=by_reference)
            )
    except (CatalogueError, MessageTooLarge, ValueError) as exc:
        fail(str(exc))
    console.print(f"produced {n} images of {len(catalogue.listings)} listings to {kafka.images_topic}")


@ingest_app.command("stock")
def ingest_stock(
    ctx: typer.Context,
    csv_file: Annotated[Path, typer.Argument(help="CSV with columns listing,inventory")],
) -> None:
    """Produce stock levels to the stock topic."""
    from ingest.catalogue import Catalogue, CatalogueError, read_stock
    from ingest.producer import catalogue_stock, send_stock
    from messaging.producer import KafkaProducer

    kafka = settings_of(ctx).kafka
    try:
        if not csv_file.is_file():
            raise CatalogueError(f"{csv_file} is not a file")
        levels = catalogue_stock(Catalogue(csv_file.parent, [], read_stock(csv_file)))
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            n = send_stock(producer, kafka.stock_topic, levels)
    except (CatalogueError, ValueError) as exc:
        fail(str(exc))
    console.print(f"produced {n} stock levels to {kafka.stock_topic}")


@ingest_app.command("remove")
def ingest_remove(
    ctx: typer.Context,
    listing_id: Annotated[str | None, typer.Option(help="remove this listing and all its images")] = None,
    image_id: Annotated[str | None, typer.Option(help="remove this one image")] = None,
) -> None:
    """Remove a listing or an image: the workers apply it after the listing's earlier uploads."""
    from ingest.remove import UnknownTarget, removal
    from lookalike import stack
    from messaging.producer import KafkaProducer
    from schemas.ids import parse_uuid
    from store import StoreError

    kafka = settings_of(ctx).kafka
    try:
        listing = None if listing_id is None else parse_uuid(listing_id, "--listing-id")
        image = None if image_id is None else parse_uuid(image_id, "--image-id")
        store = stack.configured_store(settings_of(ctx), apply_schema=False)
        try:
            message = removal(store, listing, image)
        finally:
            store.close()
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            producer.send(kafka.images_topic, message.key(), b"", message.headers())
    except (UnknownTarget, StoreError, ValueError) as exc:
        fail(str(exc))
    what = f"image {message.image_id}" if message.image_id else "listing"
    console.print(f"removal of {what} of listing {message.listing_id} produced to {kafka.images_topic}")


@ingest_app.command("replay")
def ingest_replay(ctx: typer.Context) -> None:
    """Produce again what the API acknowledged (202) and no worker stored yet: the ingest
    outbox, in the order it was accepted. For a broker that lost data (`lookalike demo` does
    this by itself at start); running it twice only sends some messages twice (idempotent)."""
    from ingest.replay import replay
    from lookalike import stack
    from messaging.producer import KafkaProducer
    from store import StoreError
    from store.outbox import Outbox

    settings = settings_of(ctx)
    kafka = settings.kafka
    try:
        outbox = Outbox(stack.configured_blobs(settings))
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            sent = replay(outbox, producer, progress=True)
    except (StoreError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    shown = ", ".join(f"{n} to {topic}" for topic, n in sorted(sent.items())) or "nothing was waiting"
    console.print(f"outbox replayed: {shown}")


@app.command()
def extract(
    ctx: typer.Context,
    drain: Annotated[bool, typer.Option(help="exit once the topic is drained")] = False,
    workers: Annotated[int, typer.Option(min=1, help="worker processes on this machine, one group")] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus port (worker i: port + i; 0: off) [LOOKALIKE_EXTRACT_METRICS_PORT]"),
    ] = None,
    live: Annotated[
        bool | None, typer.Option(help="a live status line (default: when stderr is a terminal)")
    ] = None,
) -> None:
    """Run extract workers in the consumer group until Ctrl-C or SIGTERM (or drained)."""
    from lookalike.worker import run_worker, supervise

    settings = settings_of(ctx)
    port = settings.extract.metrics_port if metrics_port is None else metrics_port
    if workers > 1:
        raise typer.Exit(supervise(workers, settings.model.device, drain=drain, metrics_port=port))
    show_live = sys.stderr.isatty() if live is None else live
    try:
        totals = run_worker(settings, drain=drain, metrics_port=port, console=err if show_live else None)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    console.print(f"stored {totals.images} vectors, {totals.dead_letters} dead letters")


@app.command("sync-stock")
def sync_stock(
    ctx: typer.Context,
    drain: Annotated[bool, typer.Option(help="exit once the topic is drained")] = False,
) -> None:
    """Follow the stock topic into the store's stock_level table."""
    from lookalike import stack

    try:
        settings = settings_of(ctx)
        store, blobs = stack.configured_store(settings), stack.configured_blobs(settings)
        stats = stack.run_stock_sync(store, settings.kafka, drain=drain, blobs=blobs)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    console.print(f"applied {stats.messages} stock updates")


@app.command()
def search(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Option(help="a photo to search with")] = None,
    image_id: Annotated[str | None, typer.Option(help="an indexed image's id")] = None,
    listing_id: Annotated[str | None, typer.Option(help="a listing's id (its images combined)")] = None,
    vector: Annotated[Path | None, typer.Option(help="a .npy array of query vectors, one per row")] = None,
    k: Annotated[int, typer.Option(min=1, max=MAX_K, help="listings to return")] = 10,
    aggregation: Annotated[Aggregation, typer.Option(help="how a listing's image scores combine")] = "max",
    in_stock_only: Annotated[bool, typer.Option(help="leave out listings without stock")] = False,
    min_score: Annotated[float | None, typer.Option(help="leave out listings scoring less")] = None,
    model: Annotated[str | None, typer.Option(help="the model whose vectors to search")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Find listings similar to an image, an image id, a listing id or raw vectors."""
    from lookalike.queries import image_query, run_search, run_vector_search
    from schemas.ids import parse_uuid
    from search.scoring import ScoreOptions

    settings = settings_of(ctx)
    try:
        opts = ScoreOptions(k=k, aggregation=aggregation, min_score=min_score)
        if vector is not None:
            if image or image_id or listing_id:
                raise ValueError("--vector cannot be combined with --image, --image-id or --listing-id")
            answers = run_vector_search(settings, vector, opts, in_stock_only, model)
        else:
            iid = parse_uuid(image_id, "--image-id") if image_id else None
            lid = parse_uuid(listing_id, "--listing-id") if listing_id else None
            answers = [run_search(settings, image_query(image, iid, lid), opts, in_stock_only, model)]
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        fail(str(exc))
    if as_json:
        shaped: object = [a.as_json() for a in answers] if vector is not None else answers[0].as_json()
        sys.stdout.write(json.dumps(shaped, indent=2) + "\n")
    else:
        from lookalike.output import print_answer

        for n, answer in enumerate(answers, 1):
            print_answer(console, answer, "Similar listings" if len(answers) == 1 else f"Query {n}")


@features_app.command("import")
def features_import(
    ctx: typer.Context,
    vectors: Annotated[Path, typer.Argument(help=".npy array (rows, dim) of vectors")],
    ids: Annotated[Path, typer.Option(help="CSV with columns listing_id,image_id, one per array row")],
    model: Annotated[str | None, typer.Option(help="the model the vectors belong to")] = None,
) -> None:
    """Store externally computed vectors (L2-normalised on the way in)."""
    from lookalike.queries import run_import

    try:
        result = run_import(settings_of(ctx), vectors, ids, model)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    console.print(
        f"imported {result.rows} vectors of {result.listings} listings as model {result.model.name} "
        f"({result.model.dim} dimensions, {result.model.dtype})"
    )


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the HTTP API and the web page (from LOOKALIKE_API_PROCESSES processes that share
    one copy of the vectors)."""
    import uvicorn

    from api.app import create_app
    from lookalike import stack

    settings = settings_of(ctx)
    if settings.api.processes > 1:
        from lookalike.processes import serve_processes

        try:
            serve_processes(settings)  # never returns: this process becomes their supervisor
        except (RuntimeError, ValueError, OSError) as exc:
            fail(str(exc))
    app_ = create_app(settings.api, lambda: stack.api_components(settings))
    uvicorn.run(app_, host=settings.api.host, port=settings.api.port)


@app.command()
def demo(
    ctx: typer.Context,
    images: Annotated[Path | None, typer.Option(help="your own folder: one subfolder per listing")] = None,
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="keep the API up afterwards")] = True,
) -> None:
    """The whole pipeline on the embedded defaults, then the API on http://127.0.0.1:8000 with
    the stack kept live: photos uploaded to it become searchable within seconds."""
    from ingest.catalogue import CatalogueError
    from lookalike.demo import demo_session
    from lookalike.demo_spark import ServiceDied

    try:
        with demo_session(settings_of(ctx), images, console, live=serve_api) as result:
            status = _serve_demo(result) if serve_api else 0
    except (CatalogueError, ServiceDied) as exc:
        fail(str(exc))
    if status:
        raise typer.Exit(status)


def _serve_demo(result: DemoResult) -> int:
    """Serve until Ctrl-C or SIGTERM; the broker stops when the demo session ends."""
    from lookalike.demo import serve_live

    return serve_live(result, console)


analytics_cli.register(app)
models_cli.register(app)
spark_serve.register(app)

if __name__ == "__main__":
    app()
