"""Riding out a broker outage: which client errors are transient, a backoff clock for retries
made from a loop that must keep polling, and the broker's state as one Kafka client sees it.

:class:`BrokerHealth` logs once when trouble starts, a reminder while it lasts and once when it
ends (never a line per failed call), and gives the status that readiness and metrics show.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)

# Errors that no waiting cures: credentials, permissions, a bad option. Everything else a
# client reports (timeouts, lost connections, no coordinator, an unknown topic) can pass.
REFUSED = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError._INVALID_ARG,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


# the broker did not answer (in time): worth another try even where a refusal is not
UNANSWERED = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


def transient(err: KafkaError) -> bool:
    """Whether waiting may cure ``err`` (a fatal error or a refusal never passes)."""
    return not err.fatal() and err.code() not in REFUSED


def error_of(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def transient_exception(exc: KafkaException) -> bool:
    err = error_of(exc)
    return err is None or transient(err)


def unanswered(exc: KafkaException) -> bool:
    """The call failed because the broker did not answer (in time), not because it refused."""
    err = error_of(exc)
    return err is not None and err.code() in UNANSWERED


class Backoff:
    """When to try again: exponential from ``base_s`` to ``cap_s``, with jitter (so replicas
    that lost the same broker do not come back in step); ``reset`` after a success."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def failed(self) -> float:
        """Count a failure; returns the seconds until the next try."""
        delay = min(self.cap_s, self.base_s * 2.0**self.failures) * random.uniform(0.75, 1.25)
        self.failures += 1
        self._next = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self.failures, self._next = 0, 0.0


class BrokerHealth:
    """The broker as one client sees it: up, or away since when and why. Thread-safe."""

    def __init__(self, who: str, remind_s: float = 30.0) -> None:
        self.who, self.remind_s = who, remind_s
        self.failures = 0  # every failure counted since the start
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reason = ""
        self._reminded = 0.0

    def trouble(self, reason: str) -> None:
        """A call failed for a transient reason: the work waits and tries again."""
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            self._reason = reason
            if self._since is None:
                self._since, self._reminded = now, now
                log.warning("%s: broker unavailable (%s); retrying with backoff", self.who, reason)
            elif now - self._reminded >= self.remind_s:
                self._reminded = now
                log.warning(
                    "%s: broker still unavailable after %.0fs (%s)", self.who, now - self._since, reason
                )

    def ok(self) -> None:
        """A call succeeded: the broker is back (logged once)."""
        with self._lock:
            if self._since is None:
                return
            away, self._since = time.monotonic() - self._since, None
        log.info("%s: broker back after %.0fs", self.who, away)

    @property
    def up(self) -> bool:
        with self._lock:
            return self._since is None

    @property
    def status(self) -> str:
        """``ok`` or ``unavailable for Ns: reason``."""
        with self._lock:
            if self._since is None:
                return "ok"
            return f"unavailable for {time.monotonic() - self._since:.0f}s: {self._reason}"
