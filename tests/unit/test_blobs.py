"""The blob store (store/blobs.py): a folder, and an S3-compatible object store played by
moto's ThreadedMotoServer (a stand-in for S3 / MinIO: a real HTTP server speaking the S3
protocol, in process); the writer that keeps pixels with retries (extract/writer.py); and the
ingest outbox kept in it as records (store/outbox.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from config.settings import BlobSettings
from extract.writer import StoreWriter
from schemas.messages import OUTBOX, DeleteMessage, ImageMessage, outbox_name
from schemas.records import Extracted, ImageRecord
from store import Store
from store.blobs import BlobError, BlobMissing, BlobStore, BlobUnavailable, FileBlobs, blob_key, open_blobs
from store.outbox import PREFIX, Outbox
from tests.conftest import jpeg_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 stand-in: moto's ThreadedMotoServer on 127.0.0.1 (skipped when moto is absent)."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed: no S3 stand-in")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_blobs(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobStore]:
    import boto3

    bucket = f"pixels-{uuid.uuid4().hex[:8]}"
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, **creds).create_bucket(Bucket=bucket)
    settings = BlobSettings(access_key_id="test", secret_access_key="test")  # type: ignore[arg-type]
    blobs = open_blobs(f"s3://{bucket}/catalogue?endpoint={s3_endpoint}", settings)
    yield blobs
    blobs.close()


@pytest.fixture
def file_blobs(tmp_path: Path) -> FileBlobs:
    return FileBlobs((tmp_path / "blobs").as_uri())


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest) -> BlobStore:
    store: BlobStore = request.getfixturevalue("file_blobs" if request.param == "file" else "s3_blobs")
    return store


def test_put_get_delete_is_idempotent(blobs: BlobStore) -> None:
    image = uuid.uuid4()
    data = jpeg_bytes(1)
    uri = blobs.put(image, data, "image/jpeg")
    assert uri == blobs.uri(image) and blobs.owns(uri) and uri.endswith(blob_key(image))
    assert blobs.put(image, data, "image/jpeg") == uri  # a redelivery: the same blob
    assert blobs.get(uri) == data
    blobs.delete(image)
    blobs.delete(image)  # twice: nothing there is not an error
    with pytest.raises(BlobMissing):
        blobs.get(uri)
    assert not blobs.owns("file:///elsewhere/x.jpg") and not blobs.owns("s3://other-bucket/x")


def test_folder_layout_is_sharded_and_atomic(file_blobs: FileBlobs) -> None:
    image = uuid.UUID("abcdef00-0000-5000-8000-000000000001")
    file_blobs.put(image, b"x" * 10)
    path = file_blobs.path(image)
    assert path.relative_to(file_blobs.root).parts == ("ab", "cd", str(image))
    assert sorted(p.name for p in path.parent.iterdir()) == [str(image)]  # no temporary file left


def test_bad_urls_and_foreign_uris(tmp_path: Path) -> None:
    with pytest.raises(BlobError, match="file:///abs/path"):
        open_blobs("ftp://host/blobs")
    with pytest.raises(BlobError, match="absolute"):
        open_blobs("file:relative/blobs")
    with pytest.raises(BlobError, match="unknown s3 URL option"):
        open_blobs("s3://bucket/p?endpont=http://x")
    blobs = FileBlobs((tmp_path / "b").as_uri())
    with pytest.raises(BlobError, match="not in the blob folder"):
        blobs.get((tmp_path / "elsewhere.jpg").as_uri())


def test_unwritable_folder_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_bytes(b"")
    blobs = FileBlobs((tmp_path / "not-a-folder").as_uri())
    with pytest.raises(BlobUnavailable, match="cannot write"):
        blobs.put(uuid.uuid4(), b"data")


def test_unreachable_object_store_is_unavailable() -> None:
    blobs = open_blobs(
        f"s3://bucket/p?endpoint=http://127.0.0.1:{free_port()}",
        BlobSettings(access_key_id="a", secret_access_key="b", timeout_s=1),  # type: ignore[arg-type]
    )
    with pytest.raises(BlobUnavailable, match="cannot write"):
        blobs.put(uuid.uuid4(), b"data")


def test_missing_bucket_is_a_refusal(s3_endpoint: str) -> None:
    blobs = open_blobs(
        f"s3://no-such-bucket/p?endpoint={s3_endpoint}",
        BlobSettings(access_key_id="test", secret_access_key="test"),  # type: ignore[arg-type]
    )
    with pytest.raises(BlobError) as info:
        blobs.put(uuid.uuid4(), b"data")
    assert not isinstance(info.value, BlobUnavailable) and "NoSuchBucket" in str(info.value)


def test_settings_default_to_a_folder_under_the_data_dir(tmp_path: Path) -> None:
    assert BlobSettings().blobs_url(tmp_path) == (tmp_path / "blobs").as_uri()
    assert BlobSettings(url="s3://b/p").blobs_url(tmp_path) == "s3://b/p"


# -- the writer keeps the pixels, with the store writer's retries ----------------------------


class FlakyBlobs(FileBlobs):
    """Unreachable for the first ``failures`` calls."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def put(self, image_id: uuid.UUID, data: bytes, content_type: str = "") -> str:
        if self.failures > 0:
            self.failures -= 1
            raise BlobUnavailable("connection refused (test)")
        return super().put(image_id, data, content_type)


def _row(listing: uuid.UUID, image: uuid.UUID) -> Extracted:
    record = ImageRecord(listing, image, "upload", "image/jpeg", 96, 64, 100)
    return Extracted(record, "listing", "m", np.full(4, 0.5, dtype=np.float32))


def test_writer_keeps_pixels_then_points_the_row_at_them(sqlite_store: Store, tmp_path: Path) -> None:
    blobs = FlakyBlobs((tmp_path / "blobs").as_uri(), failures=2)
    writer = StoreWriter(sqlite_store, "float16", give_up_after_s=0, blobs=blobs, blobs_give_up_after_s=30)
    listing, image = uuid.uuid4(), uuid.uuid4()
    writer.apply([(0, _row(listing, image))], [], {image: b"pixels"})
    record = sqlite_store.image_record(image)
    assert record is not None and record.uri == blobs.uri(image) and blobs.get(record.uri) == b"pixels"
    writer.apply([], [(0, DeleteMessage(listing, image))])
    assert sqlite_store.image_record(image) is None and not blobs.path(image).exists()


def test_writer_gives_up_on_an_unreachable_blob_store_before_writing(
    sqlite_store: Store, tmp_path: Path
) -> None:
    blobs = FlakyBlobs((tmp_path / "blobs").as_uri(), failures=10**6)
    writer = StoreWriter(sqlite_store, "float16", give_up_after_s=0, blobs=blobs, blobs_give_up_after_s=0)
    image = uuid.uuid4()
    with pytest.raises(BlobUnavailable, match="connection refused"):
        writer.apply([(0, _row(uuid.uuid4(), image))], [], {image: b"pixels"})
    assert sqlite_store.image_record(image) is None  # no row points at pixels that were not kept


def test_listing_removal_removes_every_image_s_pixels(sqlite_store: Store, file_blobs: FileBlobs) -> None:
    writer = StoreWriter(sqlite_store, "float16", give_up_after_s=0, blobs=file_blobs)
    listing, images = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    writer.apply([(n, _row(listing, i)) for n, i in enumerate(images)], [], {i: b"p" for i in images})
    assert all(file_blobs.path(i).exists() for i in images)
    writer.apply([], [(0, DeleteMessage(listing))])
    assert not any(file_blobs.path(i).exists() for i in images)
    assert sqlite_store.count("images") == 0


# -- records, and the ingest outbox kept as records --------------------------------------------


def test_records_are_kept_listed_by_prefix_and_removed(blobs: BlobStore) -> None:
    for name in ("outbox/2", "outbox/1", "other/1"):
        blobs.put_record(name, name.encode())
    blobs.put_record("outbox/1", b"replaced")
    assert blobs.record_names("outbox/") == ["outbox/1", "outbox/2"]
    assert blobs.get_record("outbox/1") == b"replaced"
    blobs.delete_record("outbox/1")
    blobs.delete_record("outbox/1")  # twice: nothing there is not an error
    with pytest.raises(BlobMissing):
        blobs.get_record("outbox/1")
    assert blobs.record_names("outbox/") == ["outbox/2"] and blobs.record_names("none/") == []
    for bad in ("../escape", "/abs", "a//b", "", "a/../b"):
        with pytest.raises(BlobError, match="record name"):
            blobs.put_record(bad, b"x")


def test_records_do_not_mix_with_pixels(file_blobs: FileBlobs) -> None:
    file_blobs.put_record("outbox/x", b"record")
    assert file_blobs.root.joinpath("records", "outbox", "x").read_bytes() == b"record"
    assert [p.name for p in file_blobs.root.iterdir()] == ["records"]  # no shard folder holds it


def test_the_outbox_keeps_writes_in_the_order_they_were_accepted(blobs: BlobStore) -> None:
    outbox = Outbox(blobs)
    listing = uuid.uuid4()
    upload = ImageMessage(
        listing, uuid.uuid4(), "rocket \u00e9t\u00e9", "image/jpeg", "upload", jpeg_bytes(3)
    )
    removal = DeleteMessage(listing)
    first = outbox.keep("images", upload.key(), upload.payload, upload.headers())
    second = outbox.keep("images", removal.key(), b"", removal.headers())
    third = outbox.keep("stock", b"k", b'{"inventory": 1}', [])
    assert outbox.names() == [first.name, second.name, third.name]
    assert all(n.startswith(PREFIX) for n in outbox.names())

    kept = list(outbox.pending())
    assert kept == [first, second, third]
    assert ImageMessage.from_kafka(kept[0].headers, kept[0].value) == upload  # bytes, names, ids intact
    assert outbox_name(kept[1].message_headers()) == second.name
    assert kept[1].message_headers()[-1] == (OUTBOX, second.name.encode())

    # the hook of the consumer loops: stored messages clear their records; others are left
    assert outbox.done_with([first.message_headers(), [("outbox", b"elsewhere/x")], []]) == 1
    assert outbox.names() == [second.name, third.name]
    outbox.done(third.name)
    assert [e.name for e in outbox.pending()] == [second.name]


def test_an_unreadable_outbox_record_is_left_and_skipped(file_blobs: FileBlobs) -> None:
    outbox = Outbox(file_blobs)
    file_blobs.put_record(f"{PREFIX}00-damaged", b"not json\n")
    good = outbox.keep("stock", b"k", b"v", [])
    assert [e.name for e in outbox.pending()] == [good.name]
    assert f"{PREFIX}00-damaged" in outbox.names()
