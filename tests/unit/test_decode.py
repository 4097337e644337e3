"""Decoding refuses what is not a usable image, with a reason."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from extract.decode import DecodeError, decode, fetch, probe
from schemas.messages import URI_LIST, ImageMessage
from tests.conftest import jpeg_bytes


def test_decodes_a_jpeg_to_rgb() -> None:
    image = decode(jpeg_bytes(size=(40, 30)), max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_grey_and_alpha_images_become_rgb() -> None:
    buf = io.BytesIO()
    Image.new("LA", (8, 8)).save(buf, format="PNG")
    assert decode(buf.getvalue(), 10_000).mode == "RGB"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"definitely not an image", "not a decodable image"),
        (jpeg_bytes()[:300], "corrupt image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "image"),
    ],
)
def test_bad_payloads_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(payload, max_pixels=1_000_000)


def test_pixel_limit_stops_decompression_bombs() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buf, format="PNG")  # tiny file, 9 Mpx
    with pytest.raises(DecodeError, match="over the limit of 1000000"):
        decode(buf.getvalue(), max_pixels=1_000_000)


def _ref(uri: str) -> ImageMessage:
    return ImageMessage(uuid.uuid4(), uuid.uuid4(), "x", URI_LIST, uri, uri.encode())


def test_fetch_follows_file_references(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes())
    assert fetch(_ref(path.as_uri())) == path.read_bytes()


def test_fetch_explains_missing_and_unsupported_references(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot read"):
        fetch(_ref((tmp_path / "missing.jpg").as_uri()))
    with pytest.raises(DecodeError, match="unsupported reference scheme 'ftp'"):
        fetch(_ref("ftp://host/a.jpg"))


def test_references_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes() + b"\0" * 5000)
    with pytest.raises(DecodeError, match="over the limit of 4096 bytes"):
        fetch(_ref(path.as_uri()), max_bytes=4096)
    assert fetch(_ref(path.as_uri()), max_bytes=1_000_000) == path.read_bytes()


def test_unreachable_http_references_are_refused() -> None:
    from messaging.broker import free_port

    with pytest.raises(DecodeError, match=r"cannot read http://127\.0\.0\.1"):
        fetch(_ref(f"http://127.0.0.1:{free_port()}/a.jpg"), timeout_s=2)


def test_probe_reads_the_header_only_and_applies_the_limit() -> None:
    header = probe(jpeg_bytes(size=(40, 30)), max_pixels=10_000)
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 40, 30)
    with pytest.raises(DecodeError, match="over the limit of 1000"):
        probe(jpeg_bytes(size=(40, 30)), max_pixels=1000)
    with pytest.raises(DecodeError, match="not a decodable image"):
        probe(b"plain text", max_pixels=1000)
