"""Store writer: a batch is written with retries and backoff; the caller commits Kafka
offsets only after this returns. Removals are applied in stream order with the batch's rows.

With a blob store, each image's original bytes are kept there (same retries, keyed by image
id, so a redelivery rewrites the same blob) before its row is written, and the row's ``uri``
is the blob's; a removal deletes the pixels first, then the rows (a crash in between leaves
rows without pixels, which the redelivered removal then deletes; never pixels without rows)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import TypeVar

from tenacity import Retrying as _Retrying
from tenacity import (
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from schemas.messages import DeleteMessage
from schemas.records import Extracted
from store import Store, StoreUnavailable
from store.blobs import BlobStore

log = logging.getLogger(__name__)
RETRYABLE = (StoreUnavailable, TimeoutError, ConnectionError)
T = TypeVar("T")


def retrying(give_up_after_s: float | None) -> _Retrying:
    """Exponential backoff with jitter on the retryable errors (the store's and the blob
    store's StoreUnavailable, timeouts, lost connections); ``None``: until they are back."""
    return _Retrying(
        retry=retry_if_exception_type(RETRYABLE),
        wait=wait_exponential_jitter(multiplier=0.5, max=30),
        stop=stop_never if give_up_after_s is None else stop_after_delay(give_up_after_s),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


class StoreWriter:
    def __init__(
        self,
        store: Store,
        dtype: str,
        give_up_after_s: float | None = None,
        blobs: BlobStore | None = None,
        blobs_give_up_after_s: float | None = None,
    ) -> None:
        """``give_up_after_s=None``: retry until the store is back (an outage stalls the
        worker, its offsets stay uncommitted, nothing is lost). ``blobs``: where the pixels
        are kept (None: rows keep their source URI, as before blob stores), retried until
        ``blobs_give_up_after_s`` (None: until it is back), then the pipeline stops."""
        self.store, self.dtype, self.blobs = store, dtype, blobs
        self._retrying = retrying(give_up_after_s)
        self._blob_retrying = retrying(blobs_give_up_after_s)

    def retry(self, fn: Callable[..., T], *args: object) -> T:
        return self._retrying(fn, *args)

    def retry_blob(self, fn: Callable[..., T], *args: object) -> T:
        return self._blob_retrying(fn, *args)

    def write(
        self,
        batch: Sequence[Extracted],
        pixels: Mapping[uuid.UUID, bytes] | None = None,
        backfill: frozenset[uuid.UUID] = frozenset(),
    ) -> None:
        """``pixels``: bytes to keep, by image id, before the rows are written. ``backfill``:
        images re-embedded from kept pixels; written only while their image still exists (a
        removal applied meanwhile by another model's workers is not undone)."""
        if backfill:
            gone = {e.image.image_id for e in batch if e.image.image_id in backfill}
            gone -= {i for i in gone if self.retry(self.store.image_record, i) is not None}
            if gone:
                log.info("skipping %d re-embedded images removed meanwhile", len(gone))
                batch = [e for e in batch if e.image.image_id not in gone]
        if self.blobs is not None and pixels:
            batch = [self._keep(e, pixels.get(e.image.image_id)) for e in batch]
        if batch:
            self.retry(self.store.write_extracted, batch, self.dtype)

    def _keep(self, row: Extracted, data: bytes | None) -> Extracted:
        if data is None or self.blobs is None:
            return row
        uri = self.retry_blob(self.blobs.put, row.image.image_id, data, row.image.content_type)
        return dataclasses.replace(row, image=dataclasses.replace(row.image, uri=uri))

    def delete(self, removal: DeleteMessage) -> None:
        if removal.image_id is None:
            if self.blobs is not None:
                for record in self.retry(self.store.listing_images, removal.listing_id):
                    self.retry_blob(self.blobs.delete, record.image_id)
            self.retry(self.store.delete_listing, removal.listing_id)
        else:
            if self.blobs is not None:
                self.retry_blob(self.blobs.delete, removal.image_id)
            self.retry(self.store.delete_images, removal.listing_id, [removal.image_id])

    def apply(
        self,
        rows: Sequence[tuple[int, Extracted]],
        removals: Sequence[tuple[int, DeleteMessage]],
        pixels: Mapping[uuid.UUID, bytes] | None = None,
        backfill: frozenset[uuid.UUID] = frozenset(),
    ) -> None:
        """Rows and removals by their position in the batch: a removal deletes what came
        before it and nothing after; consecutive rows are written together."""
        ops: list[tuple[int, Extracted | DeleteMessage]] = [*rows, *removals]
        run: list[Extracted] = []
        for _, item in sorted(ops, key=itemgetter(0)):
            if isinstance(item, DeleteMessage):
                self.write(run, pixels, backfill)
                run = []
                self.delete(item)
            else:
                run.append(item)
        self.write(run, pixels, backfill)
