"""Topic administration and broker health, with the client's errors mapped at this boundary."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from config.settings import KafkaConfig
from messaging.errors import BrokerUnavailable, MessagingError


def ensure_topics(
    client_config: KafkaConfig, topics: list[str], partitions: int, replication: int = 1
) -> None:
    """Create missing topics (idempotent; an existing topic is left as it is)."""
    admin = AdminClient(client_config)
    try:
        existing = set(admin.list_topics(timeout=15).topics)
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot list topics: {exc}") from exc
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication)
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=15).items():
        try:
            future.result(timeout=30)
        except Exception as exc:  # confluent-kafka raises KafkaException wrapping the error
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise MessagingError(f"cannot create topic {topic}: {exc}") from exc


def broker_health(client_config: KafkaConfig, timeout_s: float = 2.0) -> str:
    """ "ok", or "unavailable: <reason>" (readiness reports it)."""
    try:
        AdminClient(client_config).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return f"unavailable: {exc}"
    return "ok"
