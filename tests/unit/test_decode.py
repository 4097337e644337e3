"""Decoding refuses what is not a usable image, with a reason."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from extract.decode import DecodeError, decode, fetch
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
