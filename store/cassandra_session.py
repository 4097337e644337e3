"""One Cassandra driver session: the store URL, the cluster's policies, prepared statements
cached per CQL string, retries with exponential backoff and bounded concurrent execution.

Failures the cluster may recover from (timeouts, unavailable replicas, no host reachable)
are retried; when the retries are spent they become :class:`StoreUnavailable`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    UnresolvableContactPoints,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.concurrent import execute_concurrent
from cassandra.connection import ConnectionException
from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BatchStatement, BatchType, SimpleStatement, tuple_factory
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from config.cassandra import CassandraSettings
from store.base import StoreError, StoreUnavailable
from store.cassandra_url import CassandraTarget

log = logging.getLogger(__name__)

WRITE_PROFILE = "lookalike-write"
TRANSIENT: tuple[type[Exception], ...] = (
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    NoHostAvailable,
    ConnectionException,
)
Row = tuple[Any, ...]


def _auth_failed(error: BaseException) -> bool:
    errors = getattr(error, "errors", None)
    return (
        isinstance(error, NoHostAvailable)
        and isinstance(errors, dict)
        and bool(errors)
        and all(isinstance(e, AuthenticationFailed) for e in errors.values())
    )


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT) and not _auth_failed(error)


class CqlSession:
    """A connected driver session. Thread-safe, like the driver's ``Session``."""

    def __init__(self, target: CassandraTarget, settings: CassandraSettings) -> None:
        self.target = target
        self.settings = settings
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            self._cluster, self._session = self._retrying()(self._connect)
        except Exception as error:
            mapped = self._map(error, "connecting")
            if mapped is error:
                raise
            raise mapped from error
        self._session.default_fetch_size = settings.fetch_size
        self.use_keyspace()

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> tuple[Any, Any]:
        """A new cluster object per attempt: a failed first connect shuts the old one down."""
        cluster = self._build_cluster()
        try:
            return cluster, cluster.connect()
        except BaseException:
            cluster.shutdown()
            raise

    def _build_cluster(self) -> Any:
        s, levels = self.settings, ConsistencyLevel.name_to_value

        def profile(consistency: str, speculate: bool) -> ExecutionProfile:
            return ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(
                    DCAwareRoundRobinPolicy(local_dc=self.target.dc or "")
                ),
                retry_policy=RetryPolicy(),
                consistency_level=levels[consistency],
                serial_consistency_level=levels[s.serial_consistency],
                request_timeout=s.request_timeout_s,
                row_factory=tuple_factory,
                speculative_execution_policy=ConstantSpeculativeExecutionPolicy(
                    s.speculative_delay_ms / 1000, s.speculative_attempts
                )
                if speculate and s.speculative_delay_ms
                else None,
            )

        auth = None
        if s.username:
            auth = PlainTextAuthProvider(s.username, s.password.get_secret_value())
        try:
            return Cluster(
                contact_points=list(self.target.hosts),
                port=self.target.hosts[0][1],  # for peers the driver discovers
                execution_profiles={
                    EXEC_PROFILE_DEFAULT: profile(s.read_consistency, speculate=True),
                    WRITE_PROFILE: profile(s.write_consistency, speculate=False),
                },
                auth_provider=auth,
                ssl_context=self._ssl_context() if s.tls else None,
                connect_timeout=s.connect_timeout_s,
                control_connection_timeout=s.connect_timeout_s,
                max_schema_agreement_wait=s.ddl_timeout_s,
            )
        except UnresolvableContactPoints as error:
            raise StoreUnavailable(
                f"Cassandra hosts {self.target.describe()} do not resolve: {error}"
            ) from error

    def _ssl_context(self) -> ssl.SSLContext:
        ca = self.settings.tls_ca_file
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        context.check_hostname = self.settings.tls_check_hostname
        return context

    def use_keyspace(self) -> bool:
        """Make the target keyspace the session's, if it exists yet. When it looks absent,
        the schema metadata is read again first: another machine may have just made it."""
        if self._session.keyspace == self.target.keyspace:
            return True
        keyspaces = self._cluster.metadata.keyspaces
        with self._mapped("reading the schema"):
            if self.target.keyspace not in keyspaces:
                wait = self.settings.ddl_timeout_s
                self._cluster.refresh_schema_metadata(max_schema_agreement_wait=wait)
                keyspaces = self._cluster.metadata.keyspaces
            if self.target.keyspace not in keyspaces:
                return False
            self._session.set_keyspace(self.target.keyspace)
        return True

    def has_table(self, table: str) -> bool:
        keyspace = self._cluster.metadata.keyspaces.get(self.target.keyspace)
        return keyspace is not None and table in keyspace.tables

    def partitioner(self) -> str:
        """The cluster's partitioner class name, e.g. org.apache.cassandra.dht.Murmur3Partitioner."""
        return str(self._cluster.metadata.partitioner or "")

    def host_count(self) -> int:
        return max(1, len(self._cluster.metadata.all_hosts()))

    def shutdown(self) -> None:
        self._cluster.shutdown()

    # -- errors and retries ---------------------------------------------------------------
    def _retrying(self) -> Retrying:
        s = self.settings
        return Retrying(
            stop=stop_after_attempt(s.retry_attempts),
            wait=wait_exponential(multiplier=s.retry_backoff_s, max=s.retry_backoff_max_s),
            retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _map(self, error: BaseException, what: str) -> BaseException:
        where = f"Cassandra at {self.target.describe()}"
        if _auth_failed(error):
            return StoreError(
                f"{where}: authentication failed for user {self.settings.username!r} "
                "(LOOKALIKE_CASSANDRA_USERNAME / LOOKALIKE_CASSANDRA_PASSWORD)"
            )
        if isinstance(error, NoHostAvailable):
            return StoreUnavailable(
                f"{where} is unreachable ({what}, {self.settings.retry_attempts} attempts): {error}"
            )
        if isinstance(error, TRANSIENT):
            return StoreUnavailable(
                f"{where}: {what} failed {self.settings.retry_attempts} times: "
                f"{type(error).__name__}: {error}"
            )
        return error

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except TRANSIENT as error:
            raise self._map(error, what) from error

    # -- statements -----------------------------------------------------------------------
    def prepare(self, cql: str, idempotent: bool = True) -> Any:
        """The prepared statement of a CQL string, prepared once per session."""
        found = self._prepared.get(cql)
        if found is not None:
            return found
        with self._lock:
            if cql not in self._prepared:
                if not self.use_keyspace():
                    raise StoreError(
                        f"keyspace {self.target.keyspace!r} does not exist on "
                        f"{self.target.describe()}: apply the schema first (apply_schema)"
                    )
                with self._mapped("preparing a statement"):
                    try:
                        statement = self._retrying()(self._session.prepare, cql)
                    except InvalidRequest as error:
                        raise StoreError(f"{error} (is the schema applied?) in: {cql}") from error
                statement.is_idempotent = idempotent
                self._prepared[cql] = statement
            return self._prepared[cql]

    def execute(
        self,
        cql: str,
        params: Sequence[object] = (),
        *,
        write: bool = False,
        paging_state: bytes | None = None,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Run one prepared statement, retrying transient failures."""
        options: dict[str, Any] = {"execution_profile": WRITE_PROFILE if write else EXEC_PROFILE_DEFAULT}
        if paging_state is not None:
            options["paging_state"] = paging_state
        if timeout is not None:
            options["timeout"] = timeout
        statement = self.prepare(cql, idempotent)
        with self._mapped("a request"):
            return self._retrying()(self._session.execute, statement, params, **options)

    def execute_ddl(self, cql: str) -> None:
        """Run a schema statement (all are IF NOT EXISTS, so retrying is safe) and wait
        until every reachable node has the new schema."""
        statement = SimpleStatement(cql, is_idempotent=True)
        with self._mapped("a schema change"):
            result = self._retrying()(
                self._session.execute,
                statement,
                timeout=self.settings.ddl_timeout_s,
                execution_profile=WRITE_PROFILE,
            )
        if not result.response_future.is_schema_agreed:
            wait = self._cluster.control_connection.wait_for_schema_agreement
            if not wait(wait_time=self.settings.ddl_timeout_s):
                raise StoreUnavailable(
                    f"Cassandra at {self.target.describe()}: nodes still disagree on the schema "
                    f"{self.settings.ddl_timeout_s:.0f}s after: {cql.splitlines()[0]}"
                )

    def pages(self, cql: str, params: Sequence[object] = (), *, write: bool = False) -> Iterator[list[Row]]:
        """The rows of a query, one page (``fetch_size`` rows) at a time; each page retried."""
        state: bytes | None = None
        while True:
            result = self.execute(cql, params, write=write, paging_state=state)
            rows = result.current_rows
            if rows:
                yield list(rows)
            state = result.paging_state
            if state is None:
                return

    def rows(self, cql: str, params: Sequence[object] = (), *, write: bool = False) -> list[Row]:
        return [row for page in self.pages(cql, params, write=write) for row in page]

    def execute_many(self, requests: Sequence[tuple[str, Sequence[object]]], *, write: bool) -> list[Any]:
        """Run many statements with at most ``concurrency`` in flight; results in order.
        Only the failed ones are retried; the first error left after retries is raised."""
        return self._concurrent([(self.prepare(cql), params) for cql, params in requests], write=write)

    def write_batches(self, groups: Sequence[Sequence[tuple[str, Sequence[object]]]]) -> None:
        """Each group of writes as one UNLOGGED batch, at most ``concurrency`` in flight. Meant
        for rows of one partition (one answer's rows): Cassandra applies such a batch atomically
        and in isolation, in one round trip, so a reader never sees half of it (and a batch of one
        partition needs no batch log). Only failed batches are retried (they are idempotent)."""
        batches: list[tuple[Any, Any]] = []
        for group in groups:
            if not group:
                continue
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for cql, params in group:
                batch.add(self.prepare(cql), params)
            batch.is_idempotent = True
            batches.append((batch, None))  # a batch's values are bound inside it
        self._concurrent(batches, write=True)

    def _concurrent(self, bound: Sequence[tuple[Any, Any]], *, write: bool) -> list[Any]:
        if not bound:
            return []
        results: list[Any] = [None] * len(bound)
        pending = list(range(len(bound)))
        started = time.perf_counter()

        def attempt() -> None:
            nonlocal pending
            outcome = execute_concurrent(
                self._session,
                [bound[i] for i in pending],
                concurrency=self.settings.concurrency,
                raise_on_first_error=False,
                execution_profile=WRITE_PROFILE if write else EXEC_PROFILE_DEFAULT,
            )
            failed: list[int] = []
            errors: list[BaseException] = []
            for index, (ok, value) in zip(pending, outcome, strict=True):
                if ok:
                    results[index] = value
                else:
                    failed.append(index)
                    errors.append(value)
            pending = failed
            if errors:
                raise errors[0]

        with self._mapped(f"{len(pending)} concurrent {'writes' if write else 'reads'}"):
            self._retrying()(attempt)
        if write:
            seconds = time.perf_counter() - started
            log.debug(
                "wrote %d statements in %.3f s (%.0f a second)",
                len(bound),
                seconds,
                len(bound) / seconds if seconds > 0 else float("inf"),
            )
        return results
