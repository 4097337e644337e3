"""Shared fixtures: real components (embedded Kafka broker, Spark local, SQLite), and small
models and images made here (no downloads)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from config.cassandra import CassandraSettings
from extract.model import SPECS, FeatureModel
from schemas.records import ModelInfo
from store import Store, open_store
from store.cassandra_session import CqlSession
from store.cassandra_url import parse_url
from store.sqlite import SQLiteStore


class TinyNet(nn.Module):
    """A small random CNN standing in for VGG16 where the model's quality is not the point."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4),
            nn.ReLU(),
            nn.Conv2d(8, dim, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def tiny_model(dim: int = 32, name: str = "vgg16_fc7") -> FeatureModel:
    torch.manual_seed(0)
    info = ModelInfo(name=name, version="tiny", dim=dim, dtype="float16", weights="random:tiny-test")
    return FeatureModel(SPECS[name], TinyNet(dim), info, torch.device("cpu"))


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


CASSANDRA_ENV = "LOOKALIKE_TEST_CASSANDRA"
SKIP_CASSANDRA = "LOOKALIKE_TEST_CASSANDRA not set: Cassandra contract tests skipped"
CASSANDRA_PARAM = pytest.param(
    "cassandra",
    marks=[
        pytest.mark.cassandra,
        pytest.mark.skipif(not os.environ.get(CASSANDRA_ENV), reason=SKIP_CASSANDRA),
    ],
)


@pytest.fixture(scope="session")
def cassandra_urls() -> Iterator[Callable[[], str]]:
    """Hands out URLs of new keyspaces on the test cluster; drops them all at the end."""
    where = os.environ.get(CASSANDRA_ENV, "")
    if not where:
        pytest.skip(SKIP_CASSANDRA)
    made: list[str] = []

    def new_url() -> str:
        made.append(f"lookalike_test_{uuid.uuid4().hex[:16]}")
        return f"cassandra://{where}/{made[-1]}"

    yield new_url
    admin = CqlSession(parse_url(f"cassandra://{where}/lookalike_test_admin"), CassandraSettings())
    try:
        for keyspace in made:
            admin.execute_ddl(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        admin.shutdown()


@pytest.fixture(params=["sqlite", CASSANDRA_PARAM])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store with the schema applied: SQLite always, Cassandra when configured."""
    if request.param == "sqlite":
        store = open_store(f"sqlite:///{tmp_path / 'lookalike.db'}")
    else:
        store = open_store(request.getfixturevalue("cassandra_urls")())
    store.apply_schema()
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    yield store
    store.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Kafka-protocol broker (Tansu) on 127.0.0.1 for the whole session."""
    from messaging.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    from config.settings import SparkSettings
    from search.spark.session import spark_session

    session = spark_session(SparkSettings(master="local[2]"), "lookalike-tests")
    yield session
    session.stop()


@pytest.fixture
def unique() -> str:
    """A unique suffix for topic and group names, so tests sharing a broker don't collide."""
    return uuid.uuid4().hex[:8]
