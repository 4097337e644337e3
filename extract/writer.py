"""Store writer: a batch is written with retries and backoff; the caller commits Kafka
offsets only after this returns."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from tenacity import Retrying as _Retrying
from tenacity import (
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

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
