"""Decode image bytes (or a reference) into an RGB picture, refusing what is not one."""

from __future__ import annotations

import http.client
import io
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from schemas.messages import ImageMessage

MAX_REFERENCE_BYTES = 100_000_000


class DecodeError(ValueError):
    """The payload is not a usable image; the reason goes to the dead-letter topic."""


def fetch(message: ImageMessage, timeout_s: float = 10.0, max_bytes: int = MAX_REFERENCE_BYTES) -> bytes:
    """The image bytes: the payload itself, or what its reference URI points at (at most
    ``max_bytes``; a larger file is refused rather than read whole)."""
    if not message.is_reference:
        return message.payload
    uri = message.payload.decode("utf-8", "replace").strip()
    scheme = urllib.parse.urlsplit(uri).scheme
    try:
        if scheme == "file":
            with Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)).open("rb") as f:
                return _read_at_most(f, max_bytes, uri)
        if scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=timeout_s) as resp:
                return _read_at_most(resp, max_bytes, uri)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"cannot read {uri}: {exc}") from None
    raise DecodeError(f"unsupported reference scheme {scheme!r} in {uri!r} (file, http, https)")


def _read_at_most(stream: io.BufferedIOBase | http.client.HTTPResponse, max_bytes: int, uri: str) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DecodeError(f"{uri} is over the limit of {max_bytes} bytes")
    return bytes(data)


@dataclass(frozen=True)
class Header:
    """What the file says about itself, read without decoding the pixels."""

    format: str  # Pillow's name: JPEG, PNG, ...
    mode: str
    width: int
    height: int


def probe(data: bytes, max_pixels: int, *, verify: bool = False) -> Header:
    """Read the header only and apply the pixel limit (cheap: no pixels are decoded);
    ``verify`` also checks the file's structure (Pillow's ``verify``), still without decoding.

    The limit is checked here, explicitly, rather than through Pillow's bomb warning: the
    decode threads must not touch the process-wide warning filters (``catch_warnings`` is not
    thread-safe). Pillow still refuses images over twice its own limit with an error."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            header = Header(str(image.format), image.mode, *image.size)
            if verify:
                image.verify()
    except UnidentifiedImageError:
        raise DecodeError(f"not a decodable image: unknown format (starts with {data[:8]!r})") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"not a decodable image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt image: {exc}") from None
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise DecodeError(
            f"image is {header.width}x{header.height} = {pixels} pixels, over the limit of {max_pixels}"
        )
    return header


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check the pixel count before decompressing, and convert to RGB."""
    probe(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"not a decodable image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DecodeError(f"corrupt image: {exc}") from None
