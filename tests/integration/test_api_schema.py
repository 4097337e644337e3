"""Property-based test of the OpenAPI schema (schemathesis + hypothesis): no generated
request, valid or not, makes a 5xx. The API runs with its real broker, so a request that
happens to carry the right key ("k" is short enough to be generated) reaches the ingest paths
instead of the 503 an API without a broker gives. Beside the schema's own bodies, every
operation that takes a body is sent arbitrary bytes under arbitrary content types."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from api.app import create_app
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from lookalike.stack import api_components
from messaging.admin import ensure_topics
from store.sqlite import SQLiteStore
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration


@pytest.fixture
def app(tmp_path: Path, broker: str, unique: str) -> Iterator[FastAPI]:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}", stock_topic=f"stock-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], 1)
    blobs = BlobSettings(url=(tmp_path / "blobs").as_uri())  # the outbox too: not the checkout's data/
    components = api_components(
        replace(Settings.from_env(), kafka=kafka, blobs=blobs), seeded_service(store, tmp_path)
    )
    assert components.ingest is not None  # the real broker: requests with the key reach the ingest paths
    yield create_app(ApiSettings(keys=[SecretStr("k")]), components)
    store.close()


def operations_of(app: FastAPI) -> list[APIOperation[Any, Any, Any, Any]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # a schema the tools cannot read
        operations.append(result.ok())
    return operations


def test_no_input_makes_a_server_error(app: FastAPI) -> None:
    with TestClient(app):  # runs the lifespan: the service in place
        operations = operations_of(app)
        assert {op.label for op in operations} >= {"POST /v1/search", "GET /v1/search/{query_id}"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case: schemathesis.Case[Any]) -> None:
                case.validate_response(case.call(), checks=[not_a_server_error])

            no_5xx()


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "image/jpeg",
        "text/plain; charset=utf-8",
        "application/problem+json",
    ]
)


def test_no_body_of_any_type_makes_a_server_error(app: FastAPI) -> None:
    """Every operation of the schema that takes a body, sent arbitrary bytes under arbitrary
    content types (or none): a 4xx with a detail, never a 5xx."""
    with TestClient(app) as client:
        with_body = [op for op in operations_of(app) if op.body]
        assert {op.label for op in with_body} >= {"POST /v1/search", "POST /v1/images"}
        for operation in with_body:
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), operation.path)
            hostile_bodies_get_a_4xx(client, operation.method.upper(), path)


def hostile_bodies_get_a_4xx(client: TestClient, method: str, path: str) -> None:
    @given(
        body=st.binary(max_size=256) | st.text(max_size=64).map(str.encode),
        content_type=st.none() | CONTENT_TYPES | st.text(max_size=30),
    )
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def a_4xx(body: bytes, content_type: str | None) -> None:
        headers = {"X-API-Key": "k"}
        if content_type is not None and content_type.isprintable() and content_type.isascii():
            headers["content-type"] = content_type
        r = client.request(method, path, content=body, headers=headers)
        assert 400 <= r.status_code < 500, (method, path, content_type, body, r.text)
        assert r.json()["detail"], r.text

    a_4xx()
