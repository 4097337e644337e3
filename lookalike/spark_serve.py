"""``lookalike spark-serve``: the long-running Spark search service.

Registered on the main app by :func:`register`. The driver runs here; the executors are those
of ``LOOKALIKE_SPARK_MASTER`` (``local[*]``, a standalone cluster, YARN or Kubernetes).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer

from config.settings import Settings
from lookalike.terminal import fail, settings_of
from messaging.errors import MessagingError
from store import StoreError

log = logging.getLogger(__name__)
# A pass's task waits this long for the host that holds its partition's vectors (a task run
# elsewhere reads its partition from the store again); LOOKALIKE_SPARK_CONF may override it.
SERVE_CONF = {"spark.locality.wait.node": "60s"}


def run_service(
    settings: Settings, model_name: str | None = None, stop: threading.Event | None = None
) -> int:
    """Serve until ``stop`` (or SIGTERM / Ctrl-C); the queries answered."""
    from lookalike import stack
    from lookalike.worker import stop_on_signals
    from search.spark.metrics import ServeMetrics
    from search.spark.serve import Service
    from search.spark.session import spark_scope
    from store.models import stored_model

    settings.kafka.client_config()  # no broker configured: fail before Spark starts
    store = stack.configured_store(settings)
    model = stored_model(store, model_name or stack.model_name(settings))
    metrics = ServeMetrics()
    sp = settings.spark.model_copy(update={"conf": {**SERVE_CONF, **settings.spark.conf}})
    if sp.serve_metrics_port:
        metrics.serve(sp.serve_metrics_port, sp.serve_metrics_host)
        log.info("metrics on http://%s:%d/metrics", sp.serve_metrics_host, sp.serve_metrics_port)
    stop = stop or threading.Event()
    with spark_scope(sp, "lookalike-spark-serve", store.url) as spark, stop_on_signals(stop):
        service = Service(spark, store, model, sp, settings.search, settings.kafka, metrics)
        stats = service.run(stop)
    store.close()
    return stats.messages


def spark_serve(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="the model whose vectors to serve")] = None,
) -> None:
    """Serve searches from Spark: cache every vector across the executors, take queries from
    the queries topic, write query_results, announce answers on the answers topic."""
    try:
        n = run_service(settings_of(ctx), model)
    except (ValueError, StoreError, MessagingError, RuntimeError) as exc:
        fail(str(exc))
    log.info("stopped after %d queries", n)


def register(app: typer.Typer) -> None:
    app.command("spark-serve")(spark_serve)
