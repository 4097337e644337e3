"""Spark jobs: the same scoring as the in-memory engine, at cluster scale."""
