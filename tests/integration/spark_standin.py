"""A stand-in for ``lookalike spark-serve`` speaking the same wire (``search/spark/messages.py``)
over the real broker, answering with the in-memory engine: the client's own behaviour (202,
pending, errors) is tested with it where the real service's start-up is not the point."""

from __future__ import annotations

import threading
import time

from config.settings import KafkaSettings
from messaging.producer import KafkaProducer
from messaging.tail import TopicTail
from search.service import SearchService
from search.spark.messages import AnswerNotice, SearchMessage
from store.results import result_rows


class StandIn:
    def __init__(self, kafka: KafkaSettings, service: SearchService) -> None:
        conf = kafka.client_config()
        self.kafka, self.service = kafka, service
        self._tail = TopicTail(conf, kafka.queries_topic, 0)
        self._producer = KafkaProducer(conf, kafka.max_message_bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.answered = 0

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._tail.close()
        self._producer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            records = self._tail.read(100, 0.05)
            if not records:
                time.sleep(0.02)
            for _, value in records:
                notice = self._answer(SearchMessage.parse(value))
                self._producer.send_and_wait(self.kafka.answers_topic, notice.key(), notice.value(), [])
                self.answered += 1

    def _answer(self, message: SearchMessage) -> AnswerNotice:
        if message.model != self.service.index.model.name:
            return AnswerNotice(query_id=message.query_id, error=f"unknown model {message.model}")
        request = message.request()
        exclude = next(iter(request.exclude), None)
        answer = self.service.search_vector(request.vector, request.opts, request.in_stock_only, exclude)
        rows = result_rows(answer)
        self.service.store.write_query_results(message.query_id, rows)
        return AnswerNotice(query_id=message.query_id, results=len(rows))
