# Every target installs what it needs into .venv first (idempotent), so each is one command
# on a fresh machine. PYTHON may name another interpreter (3.10 or newer).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch's portable kernels (ATen's and MKL's) round differently from the native AVX2/AVX-512
# ones, as another CPU would: the notebook checks run once more under them (test-portable).
PORTABLE := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2

.PHONY: install chromium demo test test-portable notebooks experiment bench clean

# Checked before anything is installed, so a forgotten NAME costs nothing.
ifneq ($(filter experiment,$(MAKECMDGOALS)),)
ifeq ($(strip $(NAME)),)
$(error make experiment: NAME is missing; for example make experiment NAME=capacity ARGS="--quick" (NAME and ARGS as in python -m nlviz.experiments --help))
endif
endif

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	@echo "Installing the requirements into $(VENV)/: a minute or two and about 2 GB the first time (pip prints nothing until it is done)"
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

# Every test (the notebooks with nbval included), then the notebook checks again with portable kernels.
test: install chromium
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-portable

# The notebook checks alone, under $(PORTABLE): a stored output that depends on float bits fails here.
test-portable: install
	$(PORTABLE) $(BIN)/python -m pytest notebooks/

# Re-execute every notebook in place after a change to nlviz changes what they show (docs/notebooks.md).
notebooks: install
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.kernel_name=python3 \
	  --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.store_widget_state=False \
	  --ExecutePreprocessor.record_timing=False notebooks/*.ipynb

# One experiment, as in the README: make experiment NAME=capacity ARGS="--quick --seeds 2".
experiment: install
	$(BIN)/python -m nlviz.experiments $(NAME) $(ARGS)

# Benchmarks: overhead ratios (`name: ratio` lines), then the dashboard's latency and responsiveness.
bench: install chromium
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache runs
