"""Extract benchmark: the worker's end-to-end throughput against the model alone.

    python -m bench.extract [--models vgg16_fc7,resnet50_pool] [--images N] [--rounds R]
                            [--batch B] [--device auto] [--out FILE.json] [--save]

Prints JSON, one run per model, both sides on the same device, model and batch size:
- model_only_ips: the model on preprocessed uint8 batches already in memory
  (``FeatureModel.embed``: host-to-device copy, normalisation, network, L2 norm, copy back).
- end_to_end_ips: 640x480 JPEGs of real photos produced to the embedded Kafka broker (Tansu)
  and consumed by the real worker (``stack.run_extract``: decode threads, prefetch, model,
  SQLite writes, offset commits), in steady state: images stored from the first stored batch
  to the last. The group join and the model's first batches happen before, on warm-up
  messages; the pipeline filling up after each idle spell is reported apart
  (end_to_end_ips_with_fill_per_round: from the first message produced to the last stored).
- ratio: end_to_end_ips / model_only_ips, the median over R rounds that alternate the order
  of the two measurements on fresh images (a shared machine's noise hits both sides alike);
  ratio_cpu: model-only CPU time per image over end-to-end CPU time per image (this process,
  all threads), the throughput ratio a machine of our own would give, hardly moved by a
  neighbour's load. Per-round figures are printed too. stages_ms_per_image: the worker's time
  per stage (medians over the rounds; decode is per image, in the decode threads).
Weights are random (same speed as pretrained).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from config.settings import BlobSettings, ExtractSettings, KafkaSettings, ModelSettings, Settings
from extract.metrics import STAGES, ExtractMetrics
from extract.model import FeatureModel, load_model
from extract.preprocess import stack_uint8
from lookalike import stack
from messaging.broker import EmbeddedBroker
from messaging.producer import KafkaProducer
from schemas.messages import ImageMessage
from store import open_store

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
SIZE = (640, 480)
RESULTS = Path(__file__).resolve().parent / "results"
NO_GPU = "no GPU on this machine: CPU figures only; run `make bench-extract` on a GPU host for GPU figures"


def photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(np.asarray(getattr(data, n)())[..., :3]).convert("RGB") for n in PHOTOS]


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Distinct 640x480 JPEGs (quality 90): random crops and flips of real photos."""
    rng, base, out = np.random.default_rng(seed), photos(), []
    for i in range(n):
        p = base[i % len(base)]
        s = rng.uniform(0.6, 1.0)
        w, h = int(p.width * s), int(p.height * s)
        x, y = int(rng.integers(0, p.width - w + 1)), int(rng.integers(0, p.height - h + 1))
        img = p.crop((x, y, x + w, y + h)).resize(SIZE, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@dataclass(frozen=True)
class Sample:
    ips: float  # images per second, wall clock
    cpu_ms: float  # this process's CPU time per image, all threads


def model_only(model: FeatureModel, data: list[bytes], batch: int) -> Sample:
    pixels = [model.preprocess(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]
    batches = [stack_uint8(pixels[i : i + batch], pin=model.cuda) for i in range(0, len(pixels), batch)]
    model.embed(batches[0])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        model.embed(b)
    n = len(pixels)
    return Sample(n / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / n)


def messages(data: list[bytes], tag: str) -> list[ImageMessage]:
    return [
        ImageMessage(uuid.uuid4(), uuid.uuid4(), f"{tag}-{i}", "image/jpeg", f"bench:{tag}/{i}", d)
        for i, d in enumerate(data)
    ]


class BenchWorker:
    """The real worker in a thread, already in its group and warm, fed chunk by chunk."""

    def __init__(self, model: FeatureModel, batch: int, bootstrap: str, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.kafka = KafkaSettings(
            bootstrap=bootstrap, images_topic=f"bench-{tag}", dlq_topic=f"dlq-{tag}", group=f"bench-{tag}"
        )
        self.store = open_store(f"sqlite:///{tmp / f'{tag}.db'}")
        self.store.apply_schema()
        self.metrics, self._stop = ExtractMetrics(), threading.Event()
        settings = replace(
            Settings.from_env(),
            kafka=self.kafka,
            model=ModelSettings(name=model.info.name, batch_size=batch),  # type: ignore[arg-type]
            extract=ExtractSettings(metrics_port=0),
            blobs=BlobSettings(url=(tmp / f"blobs-{tag}").as_uri()),
        )
        self._thread = threading.Thread(
            target=lambda: stack.run_extract(
                self.store, model, settings, stop=self._stop, metrics=self.metrics
            ),
            daemon=True,
        )
        self._thread.start()
        started = time.monotonic()
        self.feed(jpegs(2 * batch, seed=1))  # group join, first batches
        self.startup_s = time.monotonic() - started

    def feed(self, data: list[bytes]) -> tuple[Sample, float]:
        """Produce ``data`` and wait until all of it is stored: (steady sample, images/s with
        the fill). Steady: from the first batch stored to the last, so the pipeline filling up
        after an idle spell (and the consumer's poll wait) is not counted; a backlog has none.
        CPU time covers the whole chunk (producing it too: a slight overestimate)."""
        base, target = self.metrics.totals.images, self.metrics.totals.images + len(data)
        started, cpu = time.perf_counter(), time.process_time()
        with KafkaProducer(self.kafka.client_config(), self.kafka.max_message_bytes) as producer:
            for m in messages(data, uuid.uuid4().hex[:6]):
                producer.send(self.kafka.images_topic, m.key(), m.payload, m.headers())
        first: tuple[float, int] | None = None
        while (stored := self.metrics.totals.images) < target:
            if not self._thread.is_alive():
                raise RuntimeError(f"worker stopped at {stored} of {target} images")
            if first is None and stored > base:
                first = (time.perf_counter(), stored)
            time.sleep(0.002)
        ended, cpu_ms = time.perf_counter(), 1000 * (time.process_time() - cpu) / len(data)
        steady = (target - first[1]) / (ended - first[0]) if first else float("nan")
        return Sample(steady, cpu_ms), len(data) / (ended - started)

    def measure(self, data: list[bytes]) -> tuple[Sample, float, dict[str, float]]:
        """(steady sample, images/s with the fill, milliseconds per image in each stage)."""
        before = dict(self.metrics.totals.seconds)
        steady, with_fill = self.feed(data)
        seconds = self.metrics.totals.seconds
        return steady, with_fill, {s: 1000 * (seconds[s] - before[s]) / len(data) for s in STAGES}

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        stored = self.store.count("features")
        self.store.close()
        return stored


def run(name: str, args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict[str, Any]:
    """Alternating rounds (model alone, end to end; then the other order) on fresh images, so
    a neighbour's load and any drift hit both sides alike. ratio: the median of the rounds'
    wall-clock ratios; ratio_cpu: the same from CPU time per image, which a neighbour's load
    hardly moves."""
    model = load_model(name, allow_random=True, device=args.device)
    batch = args.batch or stack.default_batch_size(model)
    worker = BenchWorker(model, batch, bootstrap, tmp)
    alone, e2e, with_fill, stages = [], [], [], []
    for r in range(args.rounds):
        data = jpegs(args.images, seed=10 + r)
        if r % 2:
            steady, fill, ms = worker.measure(data)
            alone.append(model_only(model, data, batch))
        else:
            alone.append(model_only(model, data, batch))
            steady, fill, ms = worker.measure(data)
        e2e.append(steady)
        with_fill.append(fill)
        stages.append(ms)
    stored = worker.close()
    return {
        "model": name,
        "device": str(model.device),
        "batch_size": batch,
        "images_per_round": args.images,
        "rounds": args.rounds,
        "jpeg_kb_mean": round(sum(map(len, jpegs(8))) / 8 / 1024, 1),
        "model_only_ips": round(statistics.median(a.ips for a in alone), 2),
        "end_to_end_ips": round(statistics.median(e.ips for e in e2e), 2),
        "ratio": round(statistics.median(e.ips / a.ips for e, a in zip(e2e, alone, strict=True)), 3),
        "ratio_cpu": round(
            statistics.median(a.cpu_ms / e.cpu_ms for e, a in zip(e2e, alone, strict=True)), 3
        ),
        "per_round": {
            "model_only_ips": [round(a.ips, 2) for a in alone],
            "end_to_end_ips": [round(e.ips, 2) for e in e2e],
            "end_to_end_ips_with_fill": [round(x, 2) for x in with_fill],
            "model_only_cpu_ms_per_image": [round(a.cpu_ms, 1) for a in alone],
            "end_to_end_cpu_ms_per_image": [round(e.cpu_ms, 1) for e in e2e],
        },
        "stages_ms_per_image": {s: round(statistics.median(r[s] for r in stages), 2) for s in STAGES},
        "stored": stored,
        "startup_s": round(worker.startup_s, 1),
    }


def device_name(device: str) -> str:
    if torch.cuda.is_available() and device != "cpu":
        return torch.cuda.get_device_name(torch.device("cuda" if device == "auto" else device))
    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "")
    cores = os.cpu_count()
    return f"CPU {cpu or platform.processor()}, {cores} cores, {torch.get_num_threads()} torch threads"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="vgg16_fc7,resnet50_pool")
    parser.add_argument("--images", type=int, default=32, help="images per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=0, help="0: the worker's default for the device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--save", action="store_true", help="also write bench/results/extract-<device>.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        runs = [run(name, args, broker.bootstrap, Path(tmp)) for name in args.models.split(",")]
    doc: dict[str, Any] = {
        "device": device_name(args.device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "runs": runs,
    }
    if not torch.cuda.is_available():
        doc["gpu"] = NO_GPU
    text = json.dumps(doc, indent=2)
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", doc["device"].lower()).strip("-")
    for out in [args.out] * bool(args.out) + [RESULTS / f"extract-{slug}.json"] * args.save:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
