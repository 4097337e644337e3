"""All Kafka client code: the consumer loop, the producer, topic administration and the
embedded broker launcher. Errors of the client are mapped here to :mod:`messaging.errors`."""
