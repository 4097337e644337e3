"""Property-based test of the OpenAPI schema (schemathesis + hypothesis): no generated
request, valid or not, makes a 5xx. The API runs with its real broker, so a request that
happens to carry the right key ("k" is short enough to be generated) reaches the ingest paths
instead of the 503 an API without a broker gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

from api.app import create_app
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from lookalike.stack import api_components
from messaging.admin import ensure_topics
from store.sqlite import SQLiteStore
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration


def test_no_input_makes_a_server_error(tmp_path: Path, broker: str, unique: str) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}", stock_topic=f"stock-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], 1)
    blobs = BlobSettings(url=(tmp_path / "blobs").as_uri())  # the outbox too: not the checkout's data/
    components = api_components(
        replace(Settings.from_env(), kafka=kafka, blobs=blobs), seeded_service(store, tmp_path)
    )
    assert components.ingest is not None  # the real broker: requests with the key reach the ingest paths
    app = create_app(ApiSettings(keys=[SecretStr("k")]), components)
    with TestClient(app):  # runs the lifespan: the service in place
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # a schema the tools cannot read
            operations.append(result.ok())
        assert {op.label for op in operations} >= {"POST /v1/search", "GET /v1/search/{query_id}"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case: schemathesis.Case[Any]) -> None:
                case.validate_response(case.call(), checks=[not_a_server_error])

            no_5xx()
    store.close()
