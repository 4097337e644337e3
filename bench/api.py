"""API benchmark at catalogue scale: requests/s, p50/p99, mean search batch size and the ratio to
one client, over real HTTP on 127.0.0.1, for every catalogue x search mode x query kind x
number of concurrent clients, all in one run.

    python -m bench.api [--catalogues 100000x1280,100000x4096,demo] [--modes exact,approximate,compact]
                        [--clients 1,8,32,128] [--kinds image_id,vector,upload]
                        [--requests N] [--upload-requests N] [--save NAME]

A catalogue ``ROWSxDIM`` is synthetic (bench.api_data: written once into a SQLite store under
``data/bench/``, reused after); ``demo`` is the demo's store (``lookalike demo --no-serve``).
For each catalogue and mode, ``lookalike serve`` runs in its own process against it
(``LOOKALIKE_*`` settings in its environment); the clients run here (bench.api_client: a raw
asyncio HTTP/1.1 loop, whose own ceiling is measured first). Searches by image id use stored
ids, by vector a stored vector plus noise (JSON of DIM floats), by upload generated JPEGs
(bench.api_photos). Each level also reports what the server spent (bench.api_server):
event-loop and worker CPU per request, in-app time per request, and the mean search batch size
from ``/metrics`` (null when the service has no batch-size histogram). Before an exact server
starts, the engine's passes are timed alone in this process (bench.api_engine): how much a batch
can gain over one query on this machine, the ceiling of the ratios. Ratios compare levels
measured in the same run; targets say met / not met. Prints JSON; ``--save NAME`` also writes
``bench/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import api_breakdown, api_client, api_data, api_engine, api_photos, api_server
from bench.api_targets import TARGETS, check_targets
from config.settings import Settings
from store import open_store

log = logging.getLogger("bench.api")
RESULTS = Path(__file__).resolve().parent / "results"
MODES = {
    "exact": {"LOOKALIKE_SEARCH_MODE": "exact", "LOOKALIKE_SEARCH_TIER": "memory"},
    "approximate": {"LOOKALIKE_SEARCH_MODE": "approximate", "LOOKALIKE_SEARCH_TIER": "memory"},
    "compact": {"LOOKALIKE_SEARCH_TIER": "compact"},
}
KINDS = ("image_id", "vector", "upload")
HANDLERS = {"image_id": "search", "vector": "search", "upload": "search_image"}
SAMPLE = 512  # distinct image ids and vectors a run sends, each in turn


@dataclass(frozen=True)
class Options:
    clients: list[int]
    kinds: list[str]
    requests: int
    upload_requests: int
    data_dir: Path
    progress: Callable[[str], None]
    compare: Path | None = None  # another tree of the code, served beside this one


def served(catalogue: str, data_dir: Path) -> api_data.Served:
    """The store a catalogue name stands for: ``ROWSxDIM`` (synthetic) or ``demo``."""
    if catalogue == "demo":
        from lookalike.stack import model_name
        from store.models import stored_model

        settings = Settings.from_env()
        url = settings.core.store_url()
        store = open_store(url)
        try:
            model = stored_model(store, model_name(settings))
            count = store.count_features(model)
        finally:
            store.close()
        return api_data.Served(url, model, {"LOOKALIKE_MODEL_ALLOW_RANDOM": "true"}, count)
    rows, _, dim = catalogue.partition("x")
    return api_data.synthetic(int(rows), int(dim), data_dir)


def requests_of(kind: str, queries: api_data.Queries, photos: Sequence[bytes]) -> list[bytes]:
    if kind == "image_id":
        return [api_client.json_request("/v1/search", {"image_id": i, "k": 10}) for i in queries.image_ids]
    if kind == "vector":
        return [
            api_client.json_request("/v1/search", {"vector": [round(float(x), 6) for x in v], "k": 10})
            for v in queries.vectors
        ]
    return [api_client.upload_request("/v1/search/image", p, {"k": "10"}) for p in photos]


def prepare(
    catalogue: str, mode: str, opts: Options
) -> tuple[api_data.Served, api_data.Queries, dict[str, str]]:
    """The catalogue's store (written once), the queries to send, and the server's settings."""
    opts.progress(f"{catalogue} {mode}: preparing the store")
    target = served(catalogue, opts.data_dir)
    store = open_store(target.url)
    try:
        queries = api_data.sample_queries(store, target.model, SAMPLE)
    finally:
        store.close()
    env = {
        **target.env,
        **MODES[mode],
        "LOOKALIKE_API_MODEL_QUEUE": str(max(opts.clients)),  # throughput, not 503s, at every level
    }
    env["LOOKALIKE_STORE"] = target.url  # absolute paths: a --compare server runs in its tree
    if catalogue == "demo":
        env["LOOKALIKE_DATA_DIR"] = str(Settings.from_env().core.data_dir.resolve())
    else:
        env["LOOKALIKE_DATA_DIR"] = str((opts.data_dir / "serve").resolve())
    return target, queries, env


def run_catalogue(catalogue: str, mode: str, opts: Options) -> dict[str, Any]:
    """One server over one catalogue in one mode: every kind at every level of clients."""
    target, queries, env = prepare(catalogue, mode, opts)
    photos = api_photos.photos(8)
    run: dict[str, Any] = {
        "name": f"{catalogue}-{mode}",
        "catalogue": catalogue,
        "rows": target.rows,
        "dim": target.model.dim,
        "model": target.model.name,
        "mode": mode,
        "store_write_s": round(target.write_s, 1),
        "server_env": {k: v for k, v in sorted(env.items()) if k != "LOOKALIKE_STORE"},
    }
    if mode == "exact" and catalogue != "demo":  # the engine's own ceiling, before the server runs
        opts.progress(f"{catalogue}: timing the engine's passes alone")
        run["engine_alone"] = api_engine.engine_alone(target.url, target.model)
    opts.progress(f"{catalogue} {mode}: starting `lookalike serve`")
    with ExitStack() as stack:
        servers = {"current": stack.enter_context(api_server.serving(env, log_of(opts, catalogue, mode)))}
        if opts.compare is not None:
            log = log_of(opts, catalogue, mode, "before")
            servers["before"] = stack.enter_context(api_server.serving(env, log, pythonpath=opts.compare))
        run["server_ready_s"] = round(servers["current"].ready_s, 1)
        kinds = {
            kind: measure_kind(servers, kind, requests_of(kind, queries, photos), opts, f"{catalogue} {mode}")
            for kind in opts.kinds
        }
    run["kinds"] = {kind: found["current"] for kind, found in kinds.items()}
    if opts.compare is not None:
        run["before"] = {
            "code": str(opts.compare),
            "kinds": {kind: found["before"] for kind, found in kinds.items()},
        }
        run["speedup_vs_before"] = {
            kind: {
                level: round(figures["requests_per_s"] / old["requests_per_s"], 2)
                for (level, figures), old in zip(
                    found["current"].items(), found["before"].values(), strict=True
                )
                if old["requests_per_s"]
            }
            for kind, found in kinds.items()
        }
    return run


def log_of(opts: Options, catalogue: str, mode: str, label: str = "") -> Path:
    return opts.data_dir / f"serve-{catalogue}-{mode}{'-' + label if label else ''}.log"


def profile(catalogue: str, mode: str, opts: Options) -> dict[str, Any]:
    """Where a request's time goes (bench.api_breakdown), by image id and by vector."""
    opts.progress(f"{catalogue} {mode}: profiling")
    _, queries, env = prepare(catalogue, mode, opts)
    kinds = {kind: requests_of(kind, queries, []) for kind in ("image_id", "vector")}
    levels = sorted({1, min(32, max(opts.clients))})
    found = api_breakdown.breakdown(env, opts.data_dir, f"{catalogue}-{mode}", kinds, levels, opts.requests)
    return {"catalogue": catalogue, "mode": mode, "clients": levels, **found}


def measure_kind(
    servers: dict[str, api_server.Server], kind: str, requests: list[bytes], opts: Options, label: str
) -> dict[str, dict[str, Any]]:
    """Every level of clients, on each server in turn at each level (so a comparison sees the
    same load on a shared machine); per server, each level's rate as a ratio to one client."""
    found: dict[str, dict[str, Any]] = {name: {} for name in servers}
    for clients in opts.clients:
        for name, server in sorted(servers.items()):  # "before" first
            opts.progress(f"{label}: {kind}, {clients} clients ({name})")
            base = opts.upload_requests if kind == "upload" else opts.requests
            level, before, after = measure_level(server, requests, clients, max(base, 2 * clients))
            figures = level.figures()
            figures["server"] = api_server.server_figures(
                server.process.pid, before, after, HANDLERS[kind], len(level.latencies)
            )
            figures["mean_batch_size"] = figures["server"].pop("mean_batch_size")
            figures["machine_load_1m"] = round(os.getloadavg()[0], 1)  # other work on the machine
            found[name][f"clients_{clients}"] = figures
    for levels in found.values():
        one = levels.get("clients_1", {}).get("requests_per_s")
        for figures in levels.values():
            figures["ratio_vs_1_client"] = round(figures["requests_per_s"] / one, 2) if one else None
    return found


def measure_level(
    server: api_server.Server, requests: list[bytes], clients: int, total: int
) -> tuple[api_client.Level, api_server.Snapshot, api_server.Snapshot]:
    """One level, with the server's counters once the clients are warm and after it."""
    snapshots: list[api_server.Snapshot] = []
    level = api_client.measure(
        server.port, requests, clients, total, lambda: snapshots.append(server.snapshot())
    )
    return level, snapshots[0], server.snapshot()


def client_ceiling(opts: Options) -> dict[str, Any]:
    """The client loop against the cheapest endpoint of a small server (the first catalogue's)."""
    opts.progress("measuring the client's ceiling")
    target = api_data.synthetic(2000, 1280, opts.data_dir)
    env = {**target.env, "LOOKALIKE_STORE": target.url, "LOOKALIKE_DATA_DIR": str(opts.data_dir / "serve")}
    with api_server.serving(env, opts.data_dir / "serve-ceiling.log") as server:
        return api_client.ceiling(server.port, clients=max(opts.clients))


def progress_printer() -> Callable[[str], None]:
    """A status line on a terminal (rewritten in place); nothing in a pipe or a log."""
    if not sys.stderr.isatty():
        return lambda _: None

    def show(message: str) -> None:
        sys.stderr.write(f"\r\033[K{message}")
        sys.stderr.flush()

    return show


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    opts = Options(
        clients=[int(c) for c in args.clients.split(",")],
        kinds=[k for k in args.kinds.split(",") if k],
        requests=args.requests,
        upload_requests=args.upload_requests,
        data_dir=args.data_dir,
        progress=progress_printer(),
        compare=args.compare,
    )
    unknown = set(opts.kinds) - set(KINDS) | set(args.modes.split(",")) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown kinds or modes: {sorted(unknown)}")
    catalogues = args.catalogues.split(",") if args.catalogues else [f"{args.rows}x{args.dim}"]
    if args.demo and "demo" not in catalogues:
        catalogues.append("demo")
    report: dict[str, Any] = {
        "device": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU used",
        "date": datetime.now(UTC).date().isoformat(),
        "command": command(sys.argv[1:] if argv is None else list(argv)),
        "note": args.note,
        "client": {"loop": "raw asyncio HTTP/1.1, one kept-alive connection per client, in one process"},
    }
    if not args.no_ceiling:
        report["client"]["ceiling"] = client_ceiling(opts)
    runs = []
    for catalogue in [] if args.no_runs else catalogues:
        for mode in ["exact"] if catalogue == "demo" else args.modes.split(","):
            runs.append(run_catalogue(catalogue, mode, opts))
    report["runs"] = runs
    if args.profile:
        first = catalogues[0]
        report["profile"] = profile(first, "exact" if first == "demo" else args.modes.split(",")[0], opts)
    opts.progress("")
    report["targets"] = check_targets(runs, TARGETS)
    text = json.dumps(report, indent=2) + "\n"
    sys.stdout.write(text)
    if args.save:
        path = RESULTS / f"{args.save}.json" if "/" not in args.save else Path(args.save)
        path.write_text(text)
    return report


def command(argv: list[str]) -> str:
    """The command line, without the note (kept beside it)."""
    at = next((i for i, a in enumerate(argv) if a == "--note" or a.startswith("--note=")), None)
    if at is not None:
        argv = argv[:at] + argv[at + (1 if "=" in argv[at] else 2) :]
    return "python -m bench.api " + shlex.join(argv)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--rows", type=int, default=100_000, help="one synthetic catalogue's rows")
    add("--dim", type=int, default=1280, help="its dimension (1280, 2048 or 4096)")
    add("--catalogues", default="", help="ROWSxDIM or demo, comma-separated")
    add("--demo", action="store_true", help="add the demo catalogue's row (exact)")
    add("--modes", "--mode", default="exact", help="exact, approximate, compact")
    add("--clients", default="1,8,32", help="levels of concurrent clients")
    add("--kinds", default=",".join(KINDS), help="image_id, vector, upload (comma-separated)")
    add("--requests", type=int, default=300, help="searches per level (>= 2 a client)")
    add("--upload-requests", type=int, default=48, help="uploads per level (>= 2 a client)")
    add("--data-dir", type=Path, default=Path("data/bench"), help="the catalogues' folder")
    add("--compare", type=Path, help="also serve this tree of the code (e.g. a `git archive` of main)")
    add("--profile", action="store_true", help="add where a request's time goes (first catalogue)")
    add("--no-runs", action="store_true", help="only the profile (with --profile)")
    add("--no-ceiling", action="store_true", help="skip the client's ceiling")
    add("--note", default="", help="a line kept in the JSON (e.g. the machine was shared)")
    add("--save", default="", help="also write bench/results/NAME.json (or a path)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
