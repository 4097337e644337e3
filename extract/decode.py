"""Decode image bytes (or a reference) into an RGB picture, refusing what is not one."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from schemas.messages import ImageMessage

MAX_REFERENCE_BYTES = 100_000_000


class DecodeError(ValueError):
    """The payload is not a usable image; the reason goes to the dead-letter topic."""


def fetch(message: ImageMessage, timeout_s: float = 10.0) -> bytes:
    """The image bytes: the payload itself, or what its reference URI points at."""
    if not message.is_reference:
        return message.payload
    uri = message.payload.decode("utf-8", "replace").strip()
    scheme = urllib.parse.urlsplit(uri).scheme
    try:
        if scheme == "file":
            path = Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
            return path.read_bytes()
        if scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=timeout_s) as resp:
                return bytes(resp.read(MAX_REFERENCE_BYTES))
    except OSError as exc:
        raise DecodeError(f"cannot read {uri}: {exc}") from None
    raise DecodeError(f"unsupported reference scheme {scheme!r} in {uri!r} (file, http, https)")


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check the pixel count before decompressing, and convert to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            image.load()
            return image.convert("RGB")
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"not a decodable image: unknown format (starts with {data[:8]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"not a decodable image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DecodeError(f"corrupt image: {exc}") from None
