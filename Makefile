# The two commands: `make demo` and `make test`. Both create the virtual environment first:
# `make demo` with notifier's runtime dependencies only, `make test` adds the development tools
# (the `dev` extra: pytest, selenium, matplotlib, ...) and Flower.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
SHELL := /bin/bash
DEV_EXTRAS := .[dev,flower]
PIP := $(PY) -m pip install --disable-pip-version-check --no-compile

.PHONY: demo test test-unit test-integration bench chaos schema requirements lock audit clean

# pip's output goes to $(VENV)/pip.log; on the terminal, a dot per package and the time it took
define pip_with_progress
@set -o pipefail; start=$$SECONDS; \
	$(PIP) $(1) 2>&1 | tee $(VENV)/pip.log | awk '/^Collecting /{ if (!n++) printf "  downloading"; printf "."; fflush() } \
	  /^Successfully installed/{ k = NF - 2 } \
	  END { if (n) printf "\n"; printf "  %s", k ? "installed " k (k == 1 ? " package" : " packages") : "nothing new to install" }' \
	  || { echo; echo "pip failed; the end of its output ($(VENV)/pip.log):"; tail -n 25 $(VENV)/pip.log; exit 1; }; \
	echo " in $$((SECONDS - start)) s"
endef

# the demo's environment: requirements.lock as it stands (exact versions, hashes checked, no resolving) and
# this checkout on the path, as an editable install would put it, without building a package first
$(RUNTIME): pyproject.toml setup.py requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "notifier needs Python 3.11 or newer (set PYTHON=...)")'
	@test -x $(PY) || { echo "creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing notifier's runtime dependencies (requirements.lock) into $(VENV); the tools for tests come with make test"
	$(call pip_with_progress,--require-hashes --only-binary=:all: --no-deps -r requirements.lock)
	@$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "notifier-checkout.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	@touch $@

$(STAMP): $(RUNTIME)
	@echo "installing the development tools (the dev extra: pytest, hypothesis, selenium, ...) and Flower into $(VENV)"
	$(call pip_with_progress,-e "$(DEV_EXTRAS)")
	@touch $@

demo: $(RUNTIME)
	@$(PY) -m notifier.cli demo

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

# regenerate docs/events.schema.json (the event contract, notifier/domain/events.py), docs/openapi.json
# docs/webhooks.schema.json (the staff and activity webhooks' body, notifier/channels/webhook.py) and
# docs/outbound.schema.json (the events back to the booking system, notifier/domain/outbound.py)
schema: $(STAMP)
	$(PY) -c 'import json; from notifier.domain.events import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/events.schema.json
	$(PY) -c 'import json; from notifier.web.app import openapi_document; print(json.dumps(openapi_document(), indent=2))' > docs/openapi.json
	$(PY) -c 'import json; from notifier.channels.webhook import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/webhooks.schema.json
	$(PY) -c 'import json; from notifier.domain.outbound import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/outbound.schema.json

# rewrite the "Tests:" lines of docs/requirements.md from the IDs the tests name
requirements: $(STAMP)
	$(PY) -m tests.requirements

# the pictures in docs/img/ (the README shows them): the browser tests of the customer page's every
# status and of the console's template preview
screenshots: $(STAMP)
	NOTIFIER_SCREENSHOTS=docs/img $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_browser_links.py -k every_status
	NOTIFIER_SCREENSHOTS=docs/img $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_console.py -k preview

# requirements.lock: the runtime dependencies and Flower, pinned with their hashes, for every platform
# of Python 3.11 (the image installs from it with --require-hashes); after changing pyproject.toml
lock: $(STAMP)
	$(PY) -m uv pip compile pyproject.toml --extra flower --generate-hashes --universal --python-version 3.11 \
	  --no-config --custom-compile-command "make lock" --quiet -o requirements.lock

# the pinned dependencies against a vulnerability database (pip-audit): exit 2 and NOT CHECKED when the
# database cannot be reached, never a silent "no known vulnerabilities"; SERVICE=osv asks OSV instead
audit: $(STAMP)
	$(PY) -m notifier.cli dev audit --service $(or $(SERVICE),pypi)

clean:
	rm -rf $(VENV) var .pytest_cache
