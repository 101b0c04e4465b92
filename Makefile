# The two README commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install browser demo test lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# The PyTorch backend tests need torch; take it only when a local wheel is there
	@# (PyPI's default build is several GB of CUDA); without it those tests skip.
	@if $(PY) -m pip download --quiet --no-index --no-deps 'torch==2.13.0' -d $(VENV)/.torch-probe >/dev/null 2>&1; \
	  then $(PY) -m pip install --quiet 'torch==2.13.0'; \
	  else echo "no local torch wheel: the PyTorch backend tests will be skipped"; fi
	touch $(STAMP)

browser:
	@# Debian's Chromium for the browser tests (Playwright cannot download one here).
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the browser tests will be skipped"

install: $(STAMP)

demo: install
	$(PY) -m xmlx.cli demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

test: lint typecheck browser
	bash scripts/test-services.sh $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
