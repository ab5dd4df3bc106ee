# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
# pytest workers; the suite is sized for 2 cores.
JOBS ?= 2

.PHONY: install browser test test-fast lint format demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[torch,dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium and its driver for the demo page's browser tests (tests/test_serve_browser.py):
# Debian's packages, installed only where /usr/bin/chromium or /usr/bin/chromedriver is missing
# (as root, or through sudo). Elsewhere: install Chromium and its matching chromedriver, and set
# ZENFER_CHROMIUM and ZENFER_CHROMEDRIVER to their paths.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x "$${ZENFER_CHROMIUM:-/usr/bin/chromium}" -a \
	  -x "$${ZENFER_CHROMEDRIVER:-/usr/bin/chromedriver}" || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

# The whole suite, after the style check (CI runs this: .ci/run).
test: lint browser
	$(PY) -m pytest -n $(JOBS) -q tests

# The edit loop: everything but the subprocess-heavy tests marked `slow`.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -m 'not slow' tests

# One formatter and one linter (ruff, configured in pyproject.toml); `make test` runs `lint` first.
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Trains configs/demo.py (digits, 32x32, minutes on 2 CPU cores), evaluates the best checkpoint
# and writes $(WORKDIR)/eval_test/{metrics.json,confusion_matrix.png}. Rerunning resumes.
demo: $(STAMP)
	$(PY) -m zenfer_jax.main --config=configs/demo.py --workdir=$(WORKDIR) --config.data.data_dir=runs/tfds
	$(PY) -m zenfer_jax.deploy.evaluate --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
