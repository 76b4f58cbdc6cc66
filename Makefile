# The README's commands. Everything installs into .venv (see infra/setup-venv.sh).
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo
export FBGEMM_TBE_BOUNDS_CHECK_MODE ?= 0

.PHONY: setup browser demo test test-fast bench lint clean

setup:
	@bash infra/setup-venv.sh

demo: setup
	$(PY) -m jobs.demo --out $(DEMO)

# Headless Chromium for tests/jobs/test_report_html.py: Debian's package, installed once (root in CI, sudo elsewhere).
browser:
	@[ -x /usr/bin/chromium ] || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not distributed"

bench: setup
	$(PY) -m jobs.bench all --out docs/bench-latest.json
	$(PY) -m jobs.bench quality --out docs/bench-quality.json
	$(PY) -m jobs.bench serve --out docs/bench-serve.json
	$(PY) -m jobs.bench headroom --out docs/bench-headroom.json

lint: setup
	$(VENV)/bin/ruff check pipelines mtl_rec jobs tests
	$(VENV)/bin/ruff format --check pipelines mtl_rec jobs tests

clean:
	rm -rf $(DEMO) .pytest_cache
