"""How Kafka clients ride out an outage (messaging/health.py): which errors are transient, the
backoff of retries made from a polling loop, and the broker state logged once per outage."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from messaging.health import Backoff, BrokerHealth, transient, transient_exception, unanswered


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError._TIMED_OUT, True),  # the committed(...) lookup
        (KafkaError._WAIT_COORD, True),  # a commit without a coordinator
        (KafkaError._ALL_BROKERS_DOWN, True),
        (KafkaError._TRANSPORT, True),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, True),  # subscribed before the topic exists
        (KafkaError.COORDINATOR_NOT_AVAILABLE, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),  # no waiting cures these
        (KafkaError.SASL_AUTHENTICATION_FAILED, False),
        (KafkaError._INVALID_ARG, False),
    ],
)
def test_only_refusals_and_fatal_errors_are_not_transient(code: int, expected: bool) -> None:
    err = KafkaError(code)
    assert transient(err) is expected
    assert transient_exception(KafkaException(err)) is expected
    assert not transient(KafkaError(KafkaError._TIMED_OUT, fatal=True))


def test_unanswered_is_a_timeout_not_a_refusal() -> None:
    assert unanswered(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    assert not unanswered(KafkaException(KafkaError(KafkaError.POLICY_VIOLATION)))
    assert not unanswered(KafkaException("no error code"))


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    assert backoff.due()
    delays = [backoff.failed() for _ in range(6)]
    assert not backoff.due()
    for n, delay in enumerate(delays):  # jitter: within a quarter of the nominal delay
        assert 0.75 * min(8.0, 2.0**n) <= delay <= 1.25 * min(8.0, 2.0**n)
    backoff.reset()
    assert backoff.due() and backoff.failures == 0


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    health = BrokerHealth("worker", remind_s=3600)
    caplog.set_level(logging.INFO, logger="messaging.health")
    assert health.up and health.status == "ok"
    for _ in range(5):
        health.trouble("Failed to get committed offsets: Local: Timed out")
    assert not health.up and health.status.startswith("unavailable for") and "committed" in health.status
    health.ok()
    health.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "broker unavailable" in lines[0] and "broker back after" in lines[1]
    assert health.up and health.failures == 5
