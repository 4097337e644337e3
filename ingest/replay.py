"""Producing again what the API acknowledged and no worker stored: the ingest outbox
(``store/outbox.py``), in the order it was accepted. Records stay until a worker stores their
message, so a replay interrupted, or run twice, only sends some messages twice: the ids are
stable and writes upserts, so each is stored once."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection

from rich.progress import Progress

from messaging.producer import KafkaProducer
from store.outbox import Outbox

log = logging.getLogger(__name__)


def replay(
    outbox: Outbox, producer: KafkaProducer, *, topics: Collection[str] | None = None, progress: bool = False
) -> Counter[str]:
    """Produce every waiting record (of ``topics`` only, when given: the others are left, and
    said so); returns how many per topic, once the broker acknowledged them all."""
    names = outbox.names()
    sent: Counter[str] = Counter()
    if not names:
        return sent
    log.info("outbox: %d acknowledged write(s) not stored yet: producing them again", len(names))
    left: Counter[str] = Counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("replaying the outbox", total=len(names))
        for entry in outbox.pending(names):
            if topics is not None and entry.topic not in topics:
                left[entry.topic] += 1
            else:
                producer.send(entry.topic, entry.key, entry.value, entry.message_headers())
                sent[entry.topic] += 1
            bar.advance(task)
    producer.flush()
    log.info("outbox: produced again: %s", _counts(sent) or "nothing")
    if left:
        log.warning(
            "outbox: left for topics this stack does not use (`lookalike ingest replay` sends them): %s",
            _counts(left),
        )
    return sent


def _counts(by_topic: Counter[str]) -> str:
    return ", ".join(f"{n} to {topic}" for topic, n in sorted(by_topic.items()))
