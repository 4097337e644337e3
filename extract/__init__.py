"""Extraction: Kafka reader -> decoder -> CNN -> store writer, each testable alone."""
