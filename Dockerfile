# syntax=docker/dockerfile:1
# One image runs every component (dcos/ and deploy/kubernetes/ start it with different commands).
#
#   docker build -t lookalike/lookalike:0.1.0 .                           # CPU torch: API, Spark, jobs
#   docker build --build-arg VARIANT=gpu -t lookalike/lookalike:0.1.0-gpu .  # extract workers on GPUs
#
# VARIANT=cpu installs torch from PyTorch's CPU index (no CUDA libraries, ~2 GB smaller);
# VARIANT=gpu installs PyPI's torch (the CUDA 13 build) and the `gpu` extra (faiss-gpu).
# No Docker engine exists where this project is built: tests/unit/test_dockerfile.py and
# tests/integration/test_image.py hold this file to the tree (docs/deploy.md says how).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a compiler for search/_scan.c, the wheel, then the virtual environment ----------
FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ARG VARIANT=cpu
# pyproject.toml's pins (tests/unit/test_dockerfile.py checks they agree)
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG FAISS_VERSION=1.15.1
ENV UV_VERSION=0.13.8 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config config
COPY schemas schemas
COPY messaging messaging
COPY store store
COPY ingest ingest
COPY extract extract
COPY search search
COPY analytics analytics
COPY api api
COPY lookalike lookalike
RUN uv build --wheel --out-dir /wheels .
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN uv venv /opt/venv \
    && export VIRTUAL_ENV=/opt/venv \
    && if [ "$VARIANT" = gpu ]; then \
         torch_index=https://pypi.org/simple; extras="[gpu]"; \
       elif [ "$VARIANT" = cpu ]; then \
         torch_index=https://download.pytorch.org/whl/cpu; extras=""; \
       else echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 1; fi \
    && uv pip install --index-url "$torch_index" \
         "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && wheel="$(ls /wheels/lookalike-*.whl)" \
    && uv pip install "${wheel}${extras}" \
    && if [ "$VARIANT" = gpu ]; then \
         uv pip uninstall faiss-cpu \
         && uv pip install --reinstall --no-deps "faiss-gpu==${FAISS_VERSION}"; \
       fi \
    && /opt/venv/bin/python -c "import faiss, search.kernel; search.kernel.best_isa()"

# ---- runtime: slim Python, Java 17 for Spark, tini, a non-root user ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lookalike \
    && useradd --system --uid 10001 --gid lookalike --home-dir /home/lookalike --create-home lookalike \
    && mkdir -p /data && chown lookalike:lookalike /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/image/entrypoint.sh /usr/local/bin/lookalike-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOOKALIKE_DATA_DIR=/data
WORKDIR /home/lookalike
USER 10001:10001
EXPOSE 8000 9400 9500
# tini reaps Spark's and the workers' children and passes SIGTERM on; the entry point runs the
# command it is given, or a Spark executor when Spark's Kubernetes scheduler asks for one.
ENTRYPOINT ["tini", "--", "lookalike-entrypoint"]
CMD ["lookalike", "--help"]
