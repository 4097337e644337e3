"""Ingest: producers for images and stock, and the embedded broker's launcher."""
