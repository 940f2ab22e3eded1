# Everything runs from a project-local virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build available on this machine's disk; an unpinned
# torch would pull a CUDA build of several GB.
TORCH_PIN := torch==2.13.0

.PHONY: install test lint typecheck bench demo next-day clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check kaggle_relay tests bench

typecheck: install
	$(VENV)/bin/mypy kaggle_relay

test: install lint typecheck
	$(PY) -m pytest -q

bench: install
	$(PY) bench/run.py

# A real multi-day chain on the local Kaggle API emulator.
demo: install
	$(VENV)/bin/kaggle-relay rehearse --demo

next-day: install
	$(VENV)/bin/kaggle-relay next-day

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
