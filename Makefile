# `make demo` and `make test` each create (or reuse) .venv, install with constraints.txt, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embslim-installed
SHARED ?= ../shared/data
DEMO_OUT ?= out/demo

.PHONY: install demo test test-fast web-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch==2.13.0 (the local CPU wheel); unpinned torch pulls GBs of CUDA.
	$(PY) -m pip install -q -c constraints.txt -e ".[pipeline,dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the bundled all-MiniLM-L6-v2: SST-2 from ../shared/data when present,
# otherwise a synthetic sentiment task the project generates (the log says which).
demo: $(STAMP)
	@if [ -f $(SHARED)/sst2/train.tsv ]; then \
	  $(VENV)/bin/embslim run --config configs/sst2-demo.toml --data-root $(SHARED) --out $(DEMO_OUT) --force; \
	else \
	  echo "[demo] $(SHARED)/sst2 not found: using the generated synthetic sentiment task instead"; \
	  $(VENV)/bin/embslim run --config configs/synthetic-demo.toml --out $(DEMO_OUT) --force; \
	fi

test: $(STAMP) web-deps
	$(PY) -m pytest

# onnxruntime-web and tokenizers.js for the browser sample app (its tests skip, saying why, when npm
# or Chromium is absent). Re-run npm ci whenever package-lock.json is newer than the install.
web-deps:
	-@if command -v npm >/dev/null 2>&1 && { [ ! -f sample_apps/web/node_modules/.package-lock.json ] || \
	  [ sample_apps/web/package-lock.json -nt sample_apps/web/node_modules/.package-lock.json ]; }; then \
	  cd sample_apps/web && npm ci --no-audit --no-fund --loglevel=error; fi

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf out .pytest_cache
