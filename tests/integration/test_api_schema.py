"""Property-based test of the OpenAPI schema (schemathesis + hypothesis): no generated
request, valid or not, makes a 5xx. The API runs with its real broker, so a request that
happens to carry the right key ("k" is short enough to be generated) reaches the ingest paths
instead of the 503 an API without a broker gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error

from api.app import create_app
from api.producer import ApiProducer
from ingest.broker import ensure_topics
from lookalike.settings import ApiSettings, KafkaSettings
from store.sqlite import SQLiteStore
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration


def test_no_input_makes_a_server_error(tmp_path: Path, broker: str, unique: str) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}", stock_topic=f"stock-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], 1)
    producer = ApiProducer(kafka)
    app = create_app(seeded_service(store, tmp_path), ApiSettings(keys=[SecretStr("k")]), producer)
    with TestClient(app):  # runs the lifespan: the service in place
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /v1/search", "GET /v1/search/{query_id}"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case: schemathesis.Case) -> None:
                case.validate_response(case.call(), checks=[not_a_server_error])

            no_5xx()
    store.close()
