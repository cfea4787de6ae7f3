# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install system-deps bench-deps demo test lint bench bench-scale corpus clean

install: $(STAMP) system-deps

# Debian packages: Chromium for the real-browser UI test (Playwright drives /usr/bin/chromium; nothing downloads it),
# PostgreSQL for the test that runs Dagster on Postgres (it starts its own throwaway server with initdb + pg_ctl).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v /usr/bin/chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

# Tesseract 5 is the OCR anchor of bench/ocr_eval.py only.
bench-deps:
	@command -v tesseract >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq tesseract-ocr >/dev/null; }

# Re-run whenever the pinned dependencies change.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,s3]'
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: install
	$(BIN)/curate demo --storage data/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# The lighter benchmarks (~20 min on 2 cores), one after another; all but ingest also write bench/results/<name>.md.
bench: install bench-deps
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ocr_eval.py
	$(BIN)/python bench/caption_throughput.py
	$(BIN)/python bench/train_bench.py

# Hierarchical k-means over 100k / 300k / 1M x 512-d embeddings (issue 6): ~10 min and ~3 GiB; run on a quiet machine.
bench-scale: install
	$(BIN)/python bench/kmeans_scale.py

# Rebuild examples/corpus from ../shared/data/corpus_dev (deterministic).
corpus: install
	$(BIN)/python examples/make_corpus.py

clean:
	rm -rf data/demo .pytest_cache
