# Every target installs what it needs into .venv first (idempotent), so each is one command
# on a fresh machine. PYTHON may name another interpreter (3.10 or newer).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The main job: a CLI training run on the default task (the dashboard replaces it later).
demo: install
	$(BIN)/python -m nlviz train --task multiscale --levels 1,8,64 --steps 3000 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Every test.
test: install
	$(BIN)/python -m pytest

# Overhead benchmarks: prints `name: ratio` lines.
bench: install
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache runs
