"""Lookalike: find listings that look like a photo."""

__version__ = "0.1.0"
