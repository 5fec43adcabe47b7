# Every target installs what it needs into .venv first (idempotent), so each is one command
# on a fresh machine. PYTHON may name another interpreter (3.10 or newer).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install chromium demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The main job: the dashboard, on http://127.0.0.1:8501 (this machine only: .streamlit/config.toml).
demo: install
	$(BIN)/python -m streamlit run app/streamlit_app.py

# Debian's chromium drives the browser test (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "the browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# Every test.
test: install chromium
	$(BIN)/python -m pytest

# Benchmarks: overhead ratios (`name: ratio` lines), then the dashboard's latency and responsiveness.
bench: install chromium
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache runs
