# Two commands set everything up on a fresh machine:
#   make run   — create .venv, install, run the demo pipeline on the embedded SQLite bus
#   make test  — create .venv, install with the test extra, run the whole suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test venv unit integration lint system-deps clean

# pytest-xdist workers for the integration tests. They mostly wait on their peers (brokers,
# backends, replays at recorded speed), so more workers than cores pays; each test picks
# its ports and directories at run time and each worker starts its own test broker.
# `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS) --dist worksteal

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/shadowreplay demo

test: lint system-deps
	$(PY) -m pytest -q $(XDIST)

system-deps:
	bash tests/system-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shadowreplay  # the stages too, through shadowreplay/<stage> (see pyproject.toml)
	$(VENV)/bin/vulture

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP) system-deps
	$(PY) -m pytest -q $(XDIST) tests/integration

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# `shadowreplay tail` as one file that runs with a bare python3 (no venv): see docs/ingest.md.
.PHONY: tail-pyz
tail-pyz: $(STAMP)
	$(PY) -m shadowreplay.collector.pyz shadowreplay-tail.pyz
