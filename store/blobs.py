"""The blob store: every image's original bytes, kept by image id, chosen by URL.

- ``file:///abs/path/blobs`` (embedded default): one file per image under sharded folders
  (``ab/cd/<image id>``, from the id's first two bytes, so no folder holds more than a few
  thousand files at a million images); written to a temporary file, fsync'ed, then renamed
  into place, so a reader never sees half an image and a crash leaves no torn file.
- ``s3://bucket/prefix?endpoint=http://host:9000&region=eu-west-1`` (production): any
  S3-compatible object store the cluster shares (AWS S3, MinIO, Ceph RGW, GCS's XML API),
  through boto3. One object per image under the same sharded keys; a PUT is atomic.

Keys depend on the image id only, so writing an image twice (a redelivered message, a
re-ingest) leaves one blob, and a removal finds it without reading any row. Beside the pixels,
a store keeps small named records (``records/<name>``, e.g. the ingest outbox of
``store/outbox.py``), written as atomically as the pixels and listed by name prefix. The URI a put
returns is what ``images.uri`` records. Errors are the store's: :class:`BlobUnavailable`
(a :class:`~store.base.StoreUnavailable`: retry later, the API answers 503),
:class:`BlobMissing` (the pixels are gone: 404) and :class:`BlobError` (a bad URL, a refusal).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from store.base import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from config.settings import BlobSettings


class BlobError(StoreError):
    """The blob store refused (bad URL, no such bucket, access denied)."""


class BlobUnavailable(StoreUnavailable):
    """The blob store cannot be reached right now: retry later."""


class BlobMissing(BlobError):
    """No pixels under this key: the image was removed, or the blob lost."""


def blob_key(image_id: uuid.UUID) -> str:
    """``ab/cd/<uuid>``: sharded by the id's first two bytes."""
    h = image_id.hex
    return f"{h[0:2]}/{h[2:4]}/{image_id}"


RECORDS = "records"  # beside the two-hex-digit shard folders: no image key starts so
_RECORD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


def record_key(name: str) -> str:
    """``records/<name>``; a name is slash-separated words (letters, digits, ``._-``)."""
    if not _RECORD_NAME.fullmatch(name) or ".." in name:
        raise BlobError(f"a record name is words of letters, digits and ._- joined by /, got {name!r}")
    return f"{RECORDS}/{name}"


class BlobStore(Protocol):
    """Original image bytes by image id. Every method is idempotent and thread-safe."""

    url: str

    def put(self, image_id: uuid.UUID, data: bytes, content_type: str = "") -> str:
        """Keep ``data`` as the pixels of ``image_id`` (replacing any); returns its URI."""
        ...

    def get(self, uri: str) -> bytes:
        """The bytes at a URI this store handed out (:meth:`owns`); BlobMissing if gone."""
        ...

    def delete(self, image_id: uuid.UUID) -> None:
        """Remove the pixels of ``image_id``; nothing there is not an error."""
        ...

    def uri(self, image_id: uuid.UUID) -> str:
        """Where the pixels of ``image_id`` are (or would be) kept."""
        ...

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` points into this store."""
        ...

    def put_record(self, name: str, data: bytes) -> None:
        """Keep a small named record (replacing any), as atomically as pixels."""
        ...

    def get_record(self, name: str) -> bytes:
        """A record's bytes; BlobMissing if there is none."""
        ...

    def record_names(self, prefix: str) -> list[str]:
        """The names of the records under ``prefix`` (e.g. ``outbox/``), sorted."""
        ...

    def delete_record(self, name: str) -> None:
        """Remove a record; none there is not an error."""
        ...

    def close(self) -> None: ...


class FileBlobs:
    """A local (or NFS-mounted) folder."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise BlobError(f"a folder blob store URL looks like file:///abs/path/blobs, got {url!r}")
        self.root = Path(urllib.parse.unquote(parts.path))
        if not self.root.is_absolute():
            raise BlobError(f"the blob folder must be an absolute path, got {url!r}")
        self.url = self.root.as_uri()
        self._prefix = self.url.rstrip("/") + "/"

    def path(self, image_id: uuid.UUID) -> Path:
        return self.root / blob_key(image_id)

    def uri(self, image_id: uuid.UUID) -> str:
        return self.path(image_id).as_uri()

    def owns(self, uri: str) -> bool:
        return uri.startswith(self._prefix)

    def put(self, image_id: uuid.UUID, data: bytes, content_type: str = "") -> str:
        target = self.path(image_id)
        _write_atomically(target, data)
        return target.as_uri()

    def get(self, uri: str) -> bytes:
        return _read(self._local(uri), uri)

    def delete(self, image_id: uuid.UUID) -> None:
        with _os_errors(f"cannot remove the pixels of {image_id}"):
            self.path(image_id).unlink(missing_ok=True)

    def _record(self, name: str) -> Path:
        return self.root / record_key(name)

    def put_record(self, name: str, data: bytes) -> None:
        _write_atomically(self._record(name), data)

    def get_record(self, name: str) -> bytes:
        return _read(self._record(name), f"record {name}")

    def record_names(self, prefix: str) -> list[str]:
        folder = self.root / RECORDS
        base = folder / prefix if prefix.endswith("/") else (folder / prefix).parent
        with _os_errors(f"cannot list {base}"):
            if not base.is_dir():
                return []
            found = (p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
            names = (p.relative_to(folder).as_posix() for p in found)
            return sorted(n for n in names if n.startswith(prefix))

    def delete_record(self, name: str) -> None:
        with _os_errors(f"cannot remove record {name}"):
            self._record(name).unlink(missing_ok=True)

    def close(self) -> None:
        pass

    def _local(self, uri: str) -> Path:
        if not self.owns(uri):
            raise BlobError(f"{uri} is not in the blob folder {self.url}")
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
        if ".." in path.parts:
            raise BlobError(f"{uri} is not in the blob folder {self.url}")
        return path

    def __repr__(self) -> str:
        return f"FileBlobs({self.url!r})"


def _write_atomically(target: Path, data: bytes) -> None:
    """A temporary file beside ``target``, fsync'ed, then renamed over it."""
    with _os_errors(f"cannot write {target}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _read(path: Path, what: str) -> bytes:
    """The bytes of ``what`` (a URI, a record) at ``path``."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise BlobMissing(f"nothing at {what}") from None
    except OSError as exc:
        raise BlobUnavailable(f"cannot read {what}: {exc}") from exc


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """A folder that cannot be written (full, unmounted, read-only) may come back: retryable."""
    try:
        yield
    except OSError as exc:
        raise BlobUnavailable(f"{what}: {exc}") from exc


class S3Blobs:
    """An S3-compatible bucket, through boto3 (imported here only: the driver stays in store/)."""

    def __init__(self, url: str, settings: BlobSettings | None = None) -> None:
        import boto3
        from botocore.config import Config

        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BlobError(f"an object store URL looks like s3://bucket/prefix?endpoint=..., got {url!r}")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise BlobError(f"unknown s3 URL option(s) {sorted(unknown)}: endpoint and region are known")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._base = self.url + "/"
        timeout = settings.timeout_s if settings else 10.0
        region = (settings.region if settings else "") or query.get("region") or None
        credentials: dict[str, Any] = {}
        if settings is not None and settings.access_key_id:
            credentials = {
                "aws_access_key_id": settings.access_key_id,
                "aws_secret_access_key": settings.secret_access_key.get_secret_value(),
            }
        # boto3's own retries are kept short: the worker's backoff (extract/writer.py) does the rest
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"} if query.get("endpoint") else None,
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=query.get("endpoint"),
            region_name=region or "us-east-1",
            config=config,
            **credentials,
        )

    def key(self, image_id: uuid.UUID) -> str:
        return f"{self.prefix}/{blob_key(image_id)}" if self.prefix else blob_key(image_id)

    def uri(self, image_id: uuid.UUID) -> str:
        return f"s3://{self.bucket}/{self.key(image_id)}"

    def owns(self, uri: str) -> bool:
        return uri.startswith(self._base)

    def put(self, image_id: uuid.UUID, data: bytes, content_type: str = "") -> str:
        extra = {"ContentType": content_type} if content_type else {}
        with self._errors(f"cannot write the pixels of {image_id}"):
            self._client.put_object(Bucket=self.bucket, Key=self.key(image_id), Body=data, **extra)
        return self.uri(image_id)

    def get(self, uri: str) -> bytes:
        if not self.owns(uri):
            raise BlobError(f"{uri} is not in the object store {self.url}")
        key = uri.removeprefix(f"s3://{self.bucket}/")
        with self._errors(f"cannot read {uri}"):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        raise AssertionError("unreachable")  # pragma: no cover  (mypy: _errors re-raises)

    def delete(self, image_id: uuid.UUID) -> None:
        with self._errors(f"cannot remove the pixels of {image_id}"):
            self._client.delete_object(Bucket=self.bucket, Key=self.key(image_id))

    def _record(self, name: str) -> str:
        return f"{self.prefix}/{record_key(name)}" if self.prefix else record_key(name)

    def put_record(self, name: str, data: bytes) -> None:
        with self._errors(f"cannot write record {name}"):
            self._client.put_object(Bucket=self.bucket, Key=self._record(name), Body=data)

    def get_record(self, name: str) -> bytes:
        with self._errors(f"cannot read record {name}"):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=self._record(name))["Body"].read()
            return body
        raise AssertionError("unreachable")  # pragma: no cover  (mypy: _errors re-raises)

    def record_names(self, prefix: str) -> list[str]:
        base = self._record("x")[:-1]  # the key of the records folder, with its slash
        names: list[str] = []
        with self._errors(f"cannot list records {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                names += [obj["Key"].removeprefix(base) for obj in page.get("Contents", [])]
        return sorted(names)

    def delete_record(self, name: str) -> None:
        with self._errors(f"cannot remove record {name}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._record(name))

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Blobs({self.url!r})"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """botocore's errors as the store's: missing -> BlobMissing; no connection, timeouts,
        throttling and 5xx -> BlobUnavailable; the rest (no bucket, denied) -> BlobError."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise BlobMissing(f"{what}: no such object") from None
            if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise BlobUnavailable(f"{what}: {code or status} {err.get('Message', '')}") from exc
            raise BlobError(f"{what}: {code} {err.get('Message', '')} (bucket {self.bucket})") from exc
        except (ConnectionError, HTTPClientError) as exc:
            raise BlobUnavailable(f"{what}: {exc}") from exc
        except BotoCoreError as exc:  # credentials missing, bad parameters
            raise BlobError(f"{what}: {exc}") from exc


def open_blobs(url: str, settings: BlobSettings | None = None) -> BlobStore:
    """The blob store at ``url``: ``file:///abs/folder`` or ``s3://bucket/prefix?endpoint=...``."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "file":
        return FileBlobs(url)
    if scheme == "s3":
        return S3Blobs(url, settings)
    raise BlobError(
        f"a blob store URL is file:///abs/path (a folder) or s3://bucket/prefix?endpoint=... , got {url!r}"
    )
