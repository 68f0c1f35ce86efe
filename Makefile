# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-topology lint format install dev bench-scale clean messages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m app.i18n
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip check
	$(BIN)/python -m app.i18n
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

## make run: embedded PostgreSQL + Redis (unless DATABASE_URL/REDIS_URL are set), migrate,
## demo data, web server and worker. Ctrl-C stops everything.
run: install
	$(BIN)/medbook demo

## make test: unit, integration and browser tests against real services, on TEST_WORKERS
## pytest-xdist workers (each with its own database and Redis number). `worksteal`: an idle
## worker takes tests queued on a busy one, and a crashed worker's test is reported failed
## while the rest run on (loadgroup/loadscope queue the crashed test again and hang).
## Bytecode is written (to __pycache__, which git ignores) even where PYTHONDONTWRITEBYTECODE
## is set: otherwise every xdist worker compiles and assertion-rewrites every test module
## again, and every server, job worker and demo a test starts compiles the app again.
TEST_WORKERS ?= 3
test: dev
	$(BIN)/python e2e/browser.py --ensure
	$(BIN)/python tests/topology/tools.py --ensure
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

## make test-topology: the booking race, per-doctor limit, idempotency, outbox and
## records-read tests again with every app behind a PgBouncer in transaction mode
## (MEDBOOK_TEST_PGBOUNCER=1, conftest.py), about 2 minutes; CI runs it after `make test`.
## The rest of tests/topology/ (replica, Sentinel, HAProxy, manifests) runs in `make test`.
## Needs pgbouncer, haproxy and redis-sentinel (`make test` installs them as root on Debian).
TOPOLOGY_TESTS := tests/topology/test_pgbouncer.py tests/integration/test_booking_concurrency.py \
	tests/integration/test_booking_limits_race.py tests/integration/test_idempotency_race.py \
	tests/integration/test_notifications_outbox.py tests/integration/test_records_read.py
test-topology: dev
	$(BIN)/python tests/topology/tools.py --ensure
	MEDBOOK_TEST_PGBOUNCER=1 $(BIN)/python -m pytest -n 2 --dist loadgroup $(TOPOLOGY_TESTS)

lint: dev
	$(BIN)/ruff check app db tasks tests e2e bench conftest.py
	$(BIN)/ruff format --check app db tasks tests e2e bench conftest.py
	$(BIN)/mypy

format: dev
	$(BIN)/ruff format app db tasks tests e2e bench conftest.py
	$(BIN)/ruff check --fix app db tasks tests e2e bench conftest.py

## make messages: extract every message of app/ and templates/ into app/locales/messages.pot,
## merge it into each language's messages.po (new ones empty, changed ones fuzzy), compile.
messages: dev
	$(BIN)/pybabel extract -F babel.cfg -k N_ -o app/locales/messages.pot --no-location \
		--sort-output --project medbook --copyright-holder medbook --msgid-bugs-address "" .
	$(BIN)/pybabel update -i app/locales/messages.pot -d app/locales \
		--width 100 --ignore-obsolete
	$(BIN)/python -m app.i18n

## Load the review's year of data (50 clinics, 1.8 M appointments) into the configured database.
bench-scale: install
	$(BIN)/medbook seed scale --replace

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
