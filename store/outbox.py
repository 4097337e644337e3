"""The ingest outbox: what the API acknowledged (202) and no worker has stored yet.

Each accepted write (an upload with its bytes, a removal, a stock level) is kept here before the
202, as one record of the blob store (``outbox/<accepted at, ns>-<random>``), and its Kafka
message carries an ``outbox`` header naming that record; the worker that stored the message
clears it. A refused write (4xx, 503) leaves nothing here. What a broker lost (the embedded
one keeps nothing across a stop) is produced again from here, in the order it was accepted
(``ingest/replay.py``): an upload and a later removal of its listing come back in that order,
so a removed upload does not come back.

A record is one JSON line (topic, key, headers) and the message's value after it. Records are
written like pixels (temporary file, fsync, rename; one S3 PUT), so a crash leaves a record
whole or absent.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from schemas.messages import OUTBOX, Headers, RawHeaders, outbox_name
from store.base import StoreError
from store.blobs import BlobMissing, BlobStore

log = logging.getLogger(__name__)
PREFIX = "outbox/"


class OutboxError(StoreError):
    """A record that cannot be read back (written by something else, or damaged)."""


@dataclass(frozen=True)
class Accepted:
    """One acknowledged message, as kept."""

    name: str  # the record's name: sorts in the order the writes were accepted
    topic: str
    key: bytes
    value: bytes
    headers: Headers  # the message's own, without the outbox header

    def message_headers(self) -> Headers:
        """The headers to produce it with: its own, and the outbox header naming the record."""
        return [*self.headers, (OUTBOX, self.name.encode())]


def encode(entry: Accepted) -> bytes:
    head = {
        "topic": entry.topic,
        "key": entry.key.decode(),
        "headers": [[k, v.decode() if isinstance(v, bytes) else v] for k, v in entry.headers],
    }
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + entry.value


def decode(name: str, data: bytes) -> Accepted:
    line, _, value = data.partition(b"\n")
    try:
        head = json.loads(line)
        headers: Headers = [(str(k), None if v is None else str(v).encode()) for k, v in head["headers"]]
        return Accepted(name, str(head["topic"]), str(head["key"]).encode(), value, headers)
    except (ValueError, KeyError, TypeError) as exc:
        raise OutboxError(f"outbox record {name} is not readable: {exc}") from None


class Outbox:
    """The outbox records of one blob store (the one the pixels live in)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def keep(self, topic: str, key: bytes, value: bytes, headers: Headers) -> Accepted:
        """Keep a message about to be produced; returns it with its record's name (produce it
        with :meth:`Accepted.message_headers`)."""
        entry = Accepted(f"{PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}", topic, key, value, headers)
        self.blobs.put_record(entry.name, encode(entry))
        return entry

    def names(self) -> list[str]:
        """The records waiting, oldest first."""
        return self.blobs.record_names(PREFIX)

    def pending(self, names: list[str] | None = None) -> Iterator[Accepted]:
        """The messages waiting (of ``names``, else all), in the order they were accepted,
        read one at a time; one cleared meanwhile is skipped, an unreadable one logged."""
        for name in self.names() if names is None else names:
            try:
                yield decode(name, self.blobs.get_record(name))
            except BlobMissing:
                continue  # stored (and cleared) while we listed
            except OutboxError as exc:
                log.error("%s; left in place", exc)

    def done(self, name: str) -> None:
        """Clear a record: its message was stored (or refused before any 202)."""
        self.blobs.delete_record(name)

    def done_with(self, headers: Iterable[RawHeaders]) -> int:
        """Clear the records of stored messages (the consumer loop's ``on_stored`` hook), in
        stream order; returns how many. The blob store unreachable: logged, and the records
        left are produced again by the next replay (harmless: writes are idempotent)."""
        names = [n for n in (outbox_name(h) for h in headers) if n and n.startswith(PREFIX)]
        cleared = 0
        try:
            for name in names:
                self.done(name)
                cleared += 1
        except StoreError as exc:
            log.warning(
                "outbox: %d record(s) not cleared (%s); a replay would send them again",
                len(names) - cleared,
                exc,
            )
        return cleared
