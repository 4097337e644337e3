"""Store writer: a batch is written with retries and backoff; the caller commits Kafka
offsets only after this returns. Removals are applied in stream order with the batch's rows."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from operator import itemgetter

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

log = logging.getLogger(__name__)
RETRYABLE = (StoreUnavailable, sqlite3.OperationalError, TimeoutError, ConnectionError)


class StoreWriter:
    def __init__(self, store: Store, dtype: str, give_up_after_s: float | None = None) -> None:
        """``give_up_after_s=None``: retry until the store is back (an outage stalls the
        worker, its offsets stay uncommitted, nothing is lost)."""
        self.store, self.dtype = store, dtype
        self._retrying = _Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=wait_exponential_jitter(multiplier=0.5, max=30),
            stop=stop_never if give_up_after_s is None else stop_after_delay(give_up_after_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def write(self, batch: Sequence[Extracted]) -> None:
        if batch:
            self._retrying(self.store.write_extracted, batch, self.dtype)

    def delete(self, removal: DeleteMessage) -> None:
        if removal.image_id is None:
            self._retrying(self.store.delete_listing, removal.listing_id)
        else:
            self._retrying(self.store.delete_images, removal.listing_id, [removal.image_id])

    def apply(
        self, rows: Sequence[tuple[int, Extracted]], removals: Sequence[tuple[int, DeleteMessage]]
    ) -> None:
        """Rows and removals by their position in the batch: a removal deletes what came
        before it and nothing after; consecutive rows are written together."""
        ops: list[tuple[int, Extracted | DeleteMessage]] = [*rows, *removals]
        run: list[Extracted] = []
        for _, item in sorted(ops, key=itemgetter(0)):
            if isinstance(item, DeleteMessage):
                self.write(run)
                run = []
                self.delete(item)
            else:
                run.append(item)
        self.write(run)
