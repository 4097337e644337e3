"""The codec, ids, message formats and settings."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from config.settings import CoreSettings, KafkaSettings, check_environment
from schemas import codec, ids
from schemas.messages import (
    DeleteMessage,
    Headers,
    ImageMessage,
    MessageError,
    parse_image_topic,
    parse_stock,
    stock_value,
)
from schemas.records import StockLevel, as_uuid


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_codec_round_trip_is_little_endian_and_exact(dtype: str) -> None:
    v = codec.l2_normalise(np.random.default_rng(0).normal(size=(5, 64)))
    blobs = [codec.encode(row, dtype) for row in v]
    assert len(blobs[0]) == 64 * (2 if dtype == "float16" else 4)
    assert blobs[0] == v[0].astype("<f2" if dtype == "float16" else "<f4").tobytes()
    expected = v.astype(codec.numpy_dtype(dtype)).astype(np.float32)
    np.testing.assert_array_equal(codec.decode_many(blobs, dtype, 64), expected)
    np.testing.assert_array_equal(codec.decode(blobs[1], dtype, 64), expected[1])


def test_codec_rejects_wrong_sizes_and_dtypes() -> None:
    with pytest.raises(ValueError, match="expected 8"):
        codec.decode(b"\0" * 10, "float16", 8)
    with pytest.raises(ValueError, match="dtype must be one of"):
        codec.numpy_dtype("int8")


def test_l2_normalise_keeps_zero_rows() -> None:
    out = codec.l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_ids_are_stable_and_distinct() -> None:
    assert ids.listing_id("car-1") == ids.listing_id("car-1")
    assert ids.listing_id("car-1") != ids.listing_id("car-2")
    assert ids.image_id("car-1", "a.jpg") != ids.image_id("car-2", "a.jpg")
    assert ids.listing_id("car-1").version == 5


def test_parse_uuid_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"--image-id must be a UUID.*'nope'"):
        ids.parse_uuid("nope", "--image-id")


def test_as_uuid_restores_trailing_zero_bytes() -> None:
    u = uuid.UUID(bytes=b"\x01" * 14 + b"\0\0")
    arr = np.array([u.bytes], dtype="S16")
    assert as_uuid(arr[0]) == u


def test_image_message_round_trips_through_headers() -> None:
    m = ImageMessage(uuid.uuid4(), uuid.uuid4(), "red car", "image/jpeg", "file:///x.jpg", b"jpeg")
    back = ImageMessage.from_kafka(m.headers(), m.payload)
    assert back == m
    assert m.key() == str(m.listing_id).encode()


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([], b"x", "missing headers"),
        (
            [("listing_id", b"zz"), ("image_id", b"zz"), ("content_type", b"image/jpeg")],
            b"x",
            "bad id",
        ),
        (
            [
                ("listing_id", str(uuid.uuid4()).encode()),
                ("image_id", str(uuid.uuid4()).encode()),
                ("content_type", b"image/jpeg"),
            ],
            b"",
            "empty",
        ),
    ],
)
def test_image_message_rejects_broken_messages(headers: Headers, value: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        ImageMessage.from_kafka(headers, value)


@pytest.mark.parametrize("image_id", [uuid.uuid4(), None])
def test_removals_round_trip_and_images_still_parse(image_id: uuid.UUID | None) -> None:
    removal = DeleteMessage(uuid.uuid4(), image_id)
    assert parse_image_topic(removal.headers(), b"") == removal
    assert parse_image_topic(removal.headers(), None) == removal
    assert removal.key() == str(removal.listing_id).encode()
    image = ImageMessage(uuid.uuid4(), uuid.uuid4(), "car", "image/png", "upload", b"png")
    assert parse_image_topic(image.headers(), image.payload) == image  # no op header: an upsert


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([("op", b"delete"), ("listing_id", str(uuid.uuid4()).encode())], b"x", "carries no value"),
        ([("op", b"delete")], b"", "needs a listing_id"),
        ([("op", b"delete"), ("listing_id", b"zz")], b"", "bad id"),
        ([("op", b"rename"), ("listing_id", str(uuid.uuid4()).encode())], b"", "unknown op 'rename'"),
    ],
)
def test_broken_removals_are_rejected(headers: Headers, value: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        parse_image_topic(headers, value)


def test_stock_message_round_trip_and_errors() -> None:
    level = StockLevel(uuid.uuid4(), 7, uuid.uuid4())
    assert parse_stock(stock_value(level)) == level
    with pytest.raises(MessageError, match="bad stock message"):
        parse_stock(b'{"listing_id": "x"}')


def test_unknown_settings_are_rejected() -> None:
    check_environment({"LOOKALIKE_STORE": "sqlite:///x.db", "PATH": "/bin"})
    with pytest.raises(ValueError, match="LOOKALIKE_STOER"):
        check_environment({"LOOKALIKE_STOER": "sqlite:///x.db"})


def test_store_url_defaults_to_sqlite_in_data_dir(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LOOKALIKE_STORE", raising=False)
    assert CoreSettings().store_url() == f"sqlite:///{tmp_path / 'lookalike.db'}"


def test_kafka_without_bootstrap_says_what_to_set(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LOOKALIKE_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ValueError, match="LOOKALIKE_KAFKA_BOOTSTRAP"):
        KafkaSettings().client_config()


def test_kafka_password_is_secret(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOOKALIKE_KAFKA_SASL_PASSWORD", "hunter2")
    settings = KafkaSettings()
    assert "hunter2" not in repr(settings)
