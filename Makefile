# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PORT   ?= 8000

.PHONY: run test lint format bench clean system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/newsletter dev --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The suite, then again in prepared-statement-free mode through a real PgBouncer in
# transaction pooling mode (as the replicas run behind CloudNativePG's Pooler). The
# second pass leaves out the tests that start their own `serve` processes (marked slow):
# those connect directly either way.
test: lint
	$(PY) -m pytest
	@if command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer; then \
	  echo "== again through PgBouncer (transaction mode, DB_STATEMENT_CACHE_SIZE=0)"; \
	  TEST_VIA_PGBOUNCER=1 $(PY) -m pytest -q -m "not slow and not browser"; \
	else echo "== pgbouncer not installed: the PgBouncer pass is skipped (make system-deps)"; fi

# Every bench, including the 10-million-row part of the pixel bench (about 10 minutes).
bench: $(STAMP)
	$(PY) -m bench --big

# Optional system packages some tests use (they skip, saying so, without them):
# chromium + chromium-driver (browser test), pgbouncer (transaction-pooling test), wrk (bench).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver pgbouncer wrk >/dev/null && echo "system packages installed" \
	    || echo "could not install the optional system packages; the tests that need them will skip"; \
	else echo "run as root on Debian/Ubuntu, or install: chromium chromium-driver pgbouncer wrk"; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
