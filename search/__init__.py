"""Search: the in-memory index and query engine; search/spark holds the Spark jobs."""
