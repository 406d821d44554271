# The two commands: `make demo` and `make test`. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration bench chaos schema requirements clean

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "notifier needs Python 3.11 or newer (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,flower]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m notifier.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

# every benchmark but chaos, each in a process of its own, regenerating docs/benchmarks.md (about 11 minutes
# on 2 cores; PostgreSQL and Redis on loopback as for `make test`); one: `$(PY) -m bench NAME --help`
bench: $(STAMP)
	$(PY) -m bench all

# the fault-injection run of issue 9 (its own PostgreSQL and Redis; about 6 minutes): docs/reliability.md
chaos: $(STAMP)
	$(PY) -m bench chaos

# regenerate docs/events.schema.json from the contract in notifier/domain/events.py
schema: $(STAMP)
	$(PY) -c 'import json; from notifier.domain.events import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/events.schema.json
	$(PY) -c 'import json; from notifier.web.app import openapi_document; print(json.dumps(openapi_document(), indent=2))' > docs/openapi.json

# rewrite the "Tests:" lines of docs/requirements.md from the IDs the tests name
requirements: $(STAMP)
	$(PY) -m tests.requirements

clean:
	rm -rf $(VENV) var .pytest_cache
