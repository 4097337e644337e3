# Two commands set everything up: `make demo` and `make test`.
# The virtual environment lives in .venv/ and is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SERVE  ?= 1
UV_VERSION := 0.13.8

.PHONY: demo test browser docs lint typecheck check spark-cluster bench-store bench-api bench-extract bench-search bench-spark-serve bench-quality bench-analyze clean

$(STAMP): pyproject.toml search/_scan.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	@command -v java >/dev/null 2>&1 || $(BIN)/uv pip install --python $(BIN)/python -e '.[java]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lookalike demo $(if $(filter 0 no false,$(SERVE)),--no-serve,)

# Debian's Chromium for the web page test (Playwright drives it; it downloads no browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: 'sudo apt-get install chromium' (the page test is skipped without it)"; fi; }

test: $(STAMP) browser
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link, anchor, generated
# reference or quoted figure fails it. (`make test` builds it too: tests/unit/test_docs.py.)
# NO_MKDOCS_2_WARNING: Material's end-of-life notice, printed on every build, is not a warning of ours.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy && $(BIN)/mypy notebooks && $(BIN)/mypy tests bench docs/gen

check: lint typecheck test

# A Spark standalone master and two workers on 127.0.0.1 from the jars pyspark ships (nothing
# downloaded); prints the LOOKALIKE_SPARK_MASTER to use; Ctrl-C stops it. WORKERS=, CORES=, MEMORY=.
spark-cluster: $(STAMP)
	$(BIN)/python -m lookalike.spark_cluster --workers $(or $(WORKERS),2) --cores $(or $(CORES),1) --memory $(or $(MEMORY),1g)

bench-store: $(STAMP)
	$(BIN)/python -m bench.store

bench-search: $(STAMP)
	$(BIN)/python -m bench.search $(if $(filter 1 yes true,$(MILLION)),--million,)

# the compact tier alone: ROWS=3000000 for the beyond-RAM run (about 26 GB of SQLite in data/)
bench-search-compact: $(STAMP)
	$(BIN)/python -m bench.search_compact --rows $(or $(ROWS),$(if $(filter 1 yes true,$(MILLION)),1000000,100000)) --save

# the Spark search service under load (needs `lookalike spark-serve`): ROWS=, DIM=, MASTER=
bench-spark-serve: $(STAMP)
	$(BIN)/python -m bench.spark_serve --rows $(or $(ROWS),100000) --dim $(or $(DIM),1280) --master '$(or $(MASTER),local[2])' --save
	$(BIN)/python -m bench.spark_floor --rows $(or $(ROWS),100000) --dim $(or $(DIM),1280) --master '$(or $(MASTER),local[2])' --save

bench-analyze: $(STAMP)
	$(BIN)/python -m bench.analyze $(if $(filter 1 yes true,$(MILLION)),--million,)

bench-extract: $(STAMP)
	$(BIN)/python -m bench.extract --save

bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality

# the HTTP API at catalogue scale: 100 000 x 1280 and x 4096 (MILLION=1 adds 1 000 000 x 1280),
# exact / approximate / compact, 1-128 clients by image id, vector and upload, plus the demo
# catalogue's row; JSON in bench/results/$(API_SAVE).json (catalogues kept in data/bench/)
comma := ,
API_SAVE ?= api-cpu-$(if $(filter 1 yes true,$(MILLION)),1m,100k)
bench-api: $(STAMP)
	@test -f data/queries/coffee-held-out.jpg || $(BIN)/lookalike demo --no-serve
	$(BIN)/python -m bench.api --demo --modes exact,approximate,compact --clients 1,8,32,128 \
		--catalogues 100000x1280,100000x4096$(if $(filter 1 yes true,$(MILLION)),$(comma)1000000x1280,) \
		--save $(API_SAVE)

clean:
	rm -rf $(VENV) data site .pytest_cache .mypy_cache .ruff_cache
