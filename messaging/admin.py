"""Topic administration and broker health, with the client's errors mapped at this boundary."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from config.settings import KafkaConfig
from messaging.errors import BrokerUnavailable, MessagingError
from messaging.health import unanswered

log = logging.getLogger(__name__)


def ensure_topics(
    client_config: KafkaConfig,
    topics: list[str],
    partitions: int,
    replication: int = 1,
    timeout_s: float = 15.0,
) -> None:
    """Create missing topics (idempotent; an existing topic is left as it is). One try:
    BrokerUnavailable when the broker does not answer within ``timeout_s``."""
    admin = AdminClient(client_config)
    try:
        failure = _create_missing(admin, topics, partitions, replication, timeout_s)
    finally:  # gone now, not kept by a traceback a retry holds: it would reconnect meanwhile
        del admin
    if failure is not None:
        raise failure


def _create_missing(
    admin: AdminClient, topics: list[str], partitions: int, replication: int, timeout_s: float
) -> MessagingError | None:
    """What to raise (made here, raised by the caller once the client is gone), or None."""
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        return BrokerUnavailable(f"cannot list topics: {exc}")
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication)
        for t in topics
        if t not in existing
    ]
    for topic, future in admin.create_topics(wanted, operation_timeout=timeout_s).items() if wanted else []:
        try:
            future.result(timeout=2 * timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                continue
            if unanswered(exc):
                return BrokerUnavailable(f"cannot create topic {topic}: {exc}")
            return MessagingError(f"cannot create topic {topic}: {exc}")  # a refusal
    return None


def wait_for_topics(
    client_config: KafkaConfig,
    topics: list[str],
    partitions: int,
    replication: int = 1,
    stop: threading.Event | None = None,
) -> bool:
    """:func:`ensure_topics`, retried with backoff while the broker is unavailable (a worker or
    follower started before its broker waits for it, a log line each try) until the topics
    exist or ``stop`` is set. Returns False when stopped first."""
    stop = stop or threading.Event()

    def waiting(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "waiting for the broker at %s to create %s: %s (try %d, next in %.1fs)",
            client_config.get("bootstrap.servers"),
            ", ".join(topics),
            exc,
            state.attempt_number,
            delay,
        )

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a stop cuts the wait short

    retrying = Retrying(
        retry=retry_if_exception_type(BrokerUnavailable),
        wait=wait_exponential_jitter(multiplier=0.5, max=15.0),
        stop=lambda _: stop.is_set(),
        sleep=pause,
        before_sleep=waiting,
        reraise=True,
    )
    try:
        retrying(ensure_topics, client_config, topics, partitions, replication, 5.0)
    except BrokerUnavailable:
        if stop.is_set():
            return False
        raise
    return True


def broker_health(client_config: KafkaConfig, timeout_s: float = 2.0) -> str:
    """ "ok", or "unavailable: <reason>" (readiness reports it)."""
    try:
        AdminClient(client_config).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return f"unavailable: {exc}"
    return "ok"
