# The image the dcos/ definitions run (CUDA builds of torch run on the GPU nodes).
# Not built in this repository's CI: no Docker engine there.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lookalike lookalike
COPY store store
COPY schemas schemas
COPY ingest ingest
COPY extract extract
COPY search search
COPY api api
RUN pip install --no-cache-dir .
ENTRYPOINT []
CMD ["lookalike", "--help"]
