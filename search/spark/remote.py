"""Searches answered by the Spark search service (``LOOKALIKE_SEARCH_ENGINE=spark``): a query is
resolved to its vector here, exactly as the in-memory path does (:meth:`SearchService.vector_of`:
an upload embedded by the CNN, an image's stored vector, a listing's mean without its own
listing), sent on ``lookalike.queries``, and its answer read from ``query_results`` once the
service's notice says the rows are there."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

from schemas.records import QueryAnswer
from search.scoring import ScoreOptions, SearchRequest
from search.service import Query, SearchService
from search.spark.client import SparkSearchClient, wait
from search.spark.messages import AnswerNotice, SearchMessage
from store.results import answer_from_rows


class AnswerFailed(ValueError):
    """The service could not answer the query (its notice's error): the query was wrong."""


class Pending(TimeoutError):
    """No answer within the wait; the query goes on and is read back by its id later."""

    def __init__(self, query_id: uuid.UUID, waited_s: float) -> None:
        super().__init__(
            f"no answer within {waited_s:g}s: query {query_id} is still pending "
            f"(read it later: GET /v1/search/{query_id} of the API)"
        )
        self.query_id = query_id


class SparkSearch:
    """The query service's front half (``service``: vector lookups, the CNN, the store) with
    the Spark search service behind it."""

    def __init__(self, service: SearchService, client: SparkSearchClient, timeout_s: float) -> None:
        self.service, self.client, self.timeout_s = service, client, timeout_s

    @property
    def model(self) -> str:
        return self.service.index.model.name

    def message(self, query: Query, opts: ScoreOptions, in_stock_only: bool = False) -> SearchMessage:
        """The query resolved to its vector (ValueError: a wrong dimension; UnknownId; a
        DecodeError for an upload that is no image)."""
        vector, own = self.service.vector_of(query)
        return self.message_of(vector, opts, in_stock_only, own)

    def message_of(
        self,
        vector: npt.NDArray[np.float32],
        opts: ScoreOptions,
        in_stock_only: bool = False,
        exclude: uuid.UUID | None = None,
    ) -> SearchMessage:
        checked = self.service.index.check_queries(vector)[0]  # the dimension, before sending
        excluded = frozenset([exclude]) if exclude else frozenset[uuid.UUID]()
        request = SearchRequest(checked, opts, in_stock_only, excluded)
        return SearchMessage.of(uuid.uuid4(), self.model, request, sent_at=time.time())

    def send(self, message: SearchMessage) -> Future[AnswerNotice]:
        return self.client.send(message)

    def answer(self, notice: AnswerNotice) -> QueryAnswer:
        """The answer a notice announces, read from ``query_results`` (AnswerFailed: the
        notice's error)."""
        if notice.error is not None:
            raise AnswerFailed(notice.error)
        return answer_from_rows(notice.query_id, self.service.store.read_query_results(notice.query_id))

    def search(self, query: Query, opts: ScoreOptions, in_stock_only: bool = False) -> QueryAnswer:
        """Ask and wait (Pending past the timeout)."""
        return self.search_messages([self.message(query, opts, in_stock_only)])[0]

    def search_many(
        self, vectors: npt.NDArray[np.float32], opts: ScoreOptions, in_stock_only: bool = False
    ) -> list[QueryAnswer]:
        """One answer per row of L2-normalised vectors (as ``SearchService.search_many``), each
        row sent as its own query (the service scores what waits together)."""
        rows = self.service.index.check_queries(vectors)
        return self.search_messages([self.message_of(r, opts, in_stock_only) for r in rows])

    def search_messages(self, messages: list[SearchMessage]) -> list[QueryAnswer]:
        """Send every message, then wait for all (one timeout in all)."""
        futures = [self.send(m) for m in messages]
        deadline = time.monotonic() + self.timeout_s
        answers = []
        for message, future in zip(messages, futures, strict=True):
            notice = wait(future, max(0.0, deadline - time.monotonic()))
            if notice is None:
                raise Pending(message.query_id, self.timeout_s)
            answers.append(self.answer(notice))
        return answers
