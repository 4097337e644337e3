"""The Kafka client's failures as the project's own exceptions (nothing above ``messaging/``
catches a confluent-kafka type)."""

from __future__ import annotations


class MessagingError(RuntimeError):
    """Kafka could not do what was asked."""


class BrokerUnavailable(MessagingError):
    """The broker did not acknowledge (in time, or at all); retry later (API: 503)."""


class MessageTooLarge(ValueError):
    """A message larger than the broker accepts: bad input, not an outage."""
