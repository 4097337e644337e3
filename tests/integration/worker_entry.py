"""A real extract worker process for the crash and scale-out tests: ``run_worker`` (signals,
settings from the environment, pipeline, commits) with the small test CNN, slowed down so a
test can act mid-stream.

    python -m tests.integration.worker_entry [--drain] [--delay SECONDS_PER_BATCH]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from config.settings import Settings
from extract.model import SPECS, FeatureModel
from lookalike.worker import run_worker
from schemas.records import ModelInfo
from tests.conftest import TinyNet


class SlowTinyNet(TinyNet):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return super().forward(x)


def slow_tiny_model(delay_s: float) -> FeatureModel:
    torch.manual_seed(0)
    info = ModelInfo("vgg16_fc7", "tiny", 32, "float16", "random:tiny-test")
    return FeatureModel(SPECS["vgg16_fc7"], SlowTinyNet(delay_s), info, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker: %(message)s")
    totals = run_worker(
        Settings.from_env(), drain=args.drain, metrics_port=0, console=None, model=slow_tiny_model(args.delay)
    )
    print(f"stored {totals.images} dead letters {totals.dead_letters}", flush=True)


if __name__ == "__main__":
    main()
