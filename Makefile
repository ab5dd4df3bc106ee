# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
# pytest workers; the suite is sized for 2 cores.
JOBS ?= 2

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[torch,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q tests

# Trains configs/demo.py (digits, 32x32, minutes on 2 CPU cores), evaluates the best checkpoint
# and writes $(WORKDIR)/eval_test/{metrics.json,confusion_matrix.png}. Rerunning resumes.
demo: $(STAMP)
	$(PY) -m zenfer_jax.main --config=configs/demo.py --workdir=$(WORKDIR) --config.data.data_dir=runs/tfds
	$(PY) -m zenfer_jax.evaluate --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
