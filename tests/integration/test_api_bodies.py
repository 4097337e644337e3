"""Hostile bodies for every endpoint that takes one (read from the app's OpenAPI schema, so a
new endpoint is covered without a line here): a body of another content type, raw bytes, an
empty body, truncated JSON, JSON in another charset or not UTF-8 at all, a multipart body
without its boundary. Each gets a 4xx whose detail says what to send instead, never a 5xx."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from tests.conftest import jpeg_bytes
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "k"}
PHOTO = jpeg_bytes(3)
JSON = "application/json"
MULTIPART = "multipart/form-data"

# (name, request kwargs, the content types it is wrong for)
WRONG: list[tuple[str, dict[str, Any], set[str]]] = [
    ("multipart photo", {"files": {"image": ("q.jpg", PHOTO, "image/jpeg")}}, {JSON}),
    ("raw photo", {"content": PHOTO, "headers": {"content-type": "image/jpeg"}}, {JSON, MULTIPART}),
    (
        "octet stream",
        {"content": b"\x00\xff\x10", "headers": {"content-type": "application/octet-stream"}},
        {JSON, MULTIPART},
    ),
    ("raw bytes, no type", {"content": b"\xff\xd8\xff\xe0garbage\x00"}, {JSON, MULTIPART}),
    ("text", {"content": b"hello", "headers": {"content-type": "text/plain"}}, {JSON, MULTIPART}),
    ("url-encoded form", {"data": {"listing": "x", "k": "3"}}, {JSON, MULTIPART}),
    ("json", {"json": {"listing": "x", "listing_id": str(uuid.uuid4())}}, {MULTIPART}),
    (
        "utf-16 json",
        {"content": '{"k": 3}'.encode("utf-16"), "headers": {"content-type": f"{JSON}; charset=utf-16"}},
        {JSON},
    ),
    ("content type garbage", {"content": b"{}", "headers": {"content-type": ";;=="}}, {JSON, MULTIPART}),
]
BROKEN: list[tuple[str, bytes, str, int]] = [
    ("empty", b"", JSON, 422),
    ("truncated", b'{"listing_id": "', JSON, 422),
    ("latin-1", '{"listing": "caf\u00e9"}'.encode("latin-1"), f"{JSON}; charset=latin-1", 400),
    ("not utf-8", b'{"listing": "\xff\xfe"}', JSON, 400),
    ("empty", b"", f"{MULTIPART}; boundary=x", 422),
    ("no boundary", b"--x\r\n\r\n--x--\r\n", MULTIPART, 400),
    (
        "wrong boundary",
        b"--x\r\nContent-Disposition: form-data\r\n\r\n--x--\r\n",
        f"{MULTIPART}; boundary=y",
        400,
    ),
]


@pytest.fixture
def app(sqlite_store, tmp_path) -> FastAPI:  # type: ignore[no-untyped-def]
    return create_app(ApiSettings(keys=[SecretStr("k")]), Components(seeded_service(sqlite_store, tmp_path)))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def body_operations(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path with its parameters filled, the one content type) of each operation
    with a request body in the app's schema."""
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                (content_type,) = operation["requestBody"]["content"]
                found.append((method.upper(), re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path), content_type))
    return found


def test_the_schema_lists_every_body(app: FastAPI) -> None:
    assert {(m, p, t) for m, p, t in body_operations(app)} == {
        ("POST", "/v1/search", JSON),
        ("POST", "/v1/search/image", MULTIPART),
        ("POST", "/v1/images", MULTIPART),
        ("POST", "/v1/stock", JSON),
    }


def says_what_to_send(detail: Any, content_type: str) -> bool:
    """The detail names the content type to send: "send multipart/form-data with the fields ..."
    or "send a JSON object in UTF-8 with Content-Type: application/json"."""
    return isinstance(detail, str) and (
        f"send {content_type}" in detail or f"Content-Type: {content_type}" in detail
    )


def test_a_body_of_another_type_is_a_415_that_says_what_to_send(app: FastAPI, client: TestClient) -> None:
    for method, path, content_type in body_operations(app):
        for name, kwargs, wrong_for in WRONG:
            if content_type not in wrong_for:
                continue
            r = client.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **KEY}})
            assert r.status_code == 415, (method, path, name, r.text)
            assert says_what_to_send(r.json()["detail"], content_type), (path, name, r.text)


def test_a_broken_body_is_a_4xx_that_says_why(app: FastAPI, client: TestClient) -> None:
    for method, path, content_type in body_operations(app):
        for name, body, given, status in BROKEN:
            if not given.startswith(content_type):
                continue
            r = client.request(method, path, content=body, headers={"content-type": given, **KEY})
            assert r.status_code == status, (method, path, name, r.text)
            detail = r.json()["detail"]
            if isinstance(detail, str):  # FastAPI's own 422s (truncated JSON) are a list that says where
                assert says_what_to_send(detail, content_type), (path, name, r.text)


def test_a_photo_posted_to_the_json_search_is_sent_to_the_image_search(client: TestClient) -> None:
    for kwargs in WRONG[:2]:
        r = client.post("/v1/search", **kwargs[1])
        assert (
            r.status_code == 415
            and "post it as multipart/form-data (field image) to /v1/search/image" in r.text
        )
    r = client.post("/v1/search/image", json={"listing_id": str(uuid.uuid4())})
    assert r.status_code == 415 and "fields image (a file)" in r.text and "post JSON to /v1/search" in r.text


def test_json_posted_to_an_upload_names_its_form_fields(client: TestClient) -> None:
    r = client.post("/v1/images", json={"listing": "x"}, headers=KEY)
    assert r.status_code == 415
    assert r.json()["detail"] == (
        "POST /v1/images takes a form upload (Content-Type: multipart/form-data), not application/json; "
        "send multipart/form-data with the fields image (a file), listing"
    )


def test_the_type_is_checked_before_the_key_and_good_bodies_still_pass(client: TestClient) -> None:
    assert client.post("/v1/stock", content=PHOTO, headers={"content-type": "image/jpeg"}).status_code == 415
    assert client.post("/v1/stock", json={"listing": "x", "inventory": 1}).status_code == 401
    ok = client.post(
        "/v1/search", content=b'{"k": 2, "vector": [1.0]}', headers={"content-type": f"{JSON}; charset=UTF-8"}
    )
    assert ok.status_code == 422 and "must have 32 values" in ok.text  # read as JSON: the vector's length
    upload = client.post("/v1/search/image", files={"image": ("q.jpg", PHOTO, "image/jpeg")}, data={"k": "2"})
    assert upload.status_code == 200 and len(upload.json()["results"]) == 2
