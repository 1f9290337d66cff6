# The two commands a user needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench mosquitto postgres chromium aedes clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[host,boosting,parquet,serve,report,review,dev]'
	touch $(STAMP)

mosquitto:
	@bash scripts/ensure-mosquitto.sh

postgres:
	@bash scripts/ensure-postgres.sh

chromium:
	@bash scripts/ensure-chromium.sh

aedes:
	@bash scripts/ensure-aedes.sh

demo: $(STAMP) mosquitto
	$(PY) examples/demo.py
	$(PY) examples/fieldloop.py

test: $(STAMP) mosquitto postgres chromium aedes
	$(PY) -m pytest -n 2
	EDGEKIT_TEST_SECURE=1 $(PY) -m pytest -n 2 -q -m tls_variant   # the same tests on a TLS + ACL broker

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy edgekit device_agent

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
