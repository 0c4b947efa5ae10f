# Every target sets up what it needs on first use; later runs reuse .venv.
# PYTHON is resolved through pyenv: .python-version selects 3.9.18.
PYTHON ?= python3.9
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# pyproject checks types as Python 3.9 sees them; CI's newest-Python run
# checks as that Python instead (its site-packages no longer parse as 3.9).
MYPY_FLAGS ?=

HOST ?= 0.0.0.0
PORT ?= 8080
MODEL_PATH ?= artifacts/model.onnx
export HOST PORT MODEL_PATH

.PHONY: run test lint format train score bench bench-quick bench-overload bench-stages bench-fields fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Serving needs base.txt only; the test/train targets add the rest.
$(VENV)/.base: requirements/base.txt | $(BIN)/python
	$(PIP) install -r requirements/base.txt
	touch $@

# Scoring a catalogue (score.py) needs base.txt and batch.txt.
$(VENV)/.batch: requirements/base.txt requirements/batch.txt | $(BIN)/python
	$(PIP) install -r requirements/batch.txt
	touch $@ $(VENV)/.base

$(VENV)/.dev: requirements/base.txt requirements/train.txt requirements/batch.txt requirements/dev.txt | $(BIN)/python
	$(PIP) install -r requirements/dev.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@ $(VENV)/.base $(VENV)/.batch

run: $(VENV)/.base
	$(BIN)/python api.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(MYPY_FLAGS)

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest

train: $(VENV)/.dev
	$(BIN)/python -m categorizer.notebook treinamento.ipynb

# make score INPUT=catalogue.csv OUTPUT=scored.parquet [ENGINE=spark] [SCORE_ARGS=--strict]
ENGINE ?= local
score: $(VENV)/.batch
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make score INPUT=... OUTPUT=... [ENGINE=local|spark] [SCORE_ARGS=...]" >&2; exit 2; }
	$(BIN)/python score.py "$(INPUT)" "$(OUTPUT)" --model "$(MODEL_PATH)" --engine "$(ENGINE)" $(SCORE_ARGS)

bench: $(VENV)/.dev
	$(BIN)/python -m bench

bench-quick: $(VENV)/.dev
	$(BIN)/python -m bench --quick

# Issue 12's overload scenario: 256 clients x 4 MB bodies, then SIGTERM (~1 min).
bench-overload: $(VENV)/.dev
	$(BIN)/python -m bench.overload

# The serving graph's cost per stage, in this process (about a minute).
bench-stages: $(VENV)/.dev
	$(BIN)/python -m bench.stages

# Issue 13's cost of the listing fields: make bench-fields BEFORE=model-before-the-fields.onnx
# (git show <commit>:artifacts/model.onnx > that file).
bench-fields: $(VENV)/.dev
	@test -n "$(BEFORE)" || { echo "usage: make bench-fields BEFORE=old-model.onnx" >&2; exit 2; }
	$(BIN)/python -m bench.fields --before "$(BEFORE)" --after "$(MODEL_PATH)"

FUZZ_EXAMPLES ?= 20000
# Longer schemathesis run against a live server (CI runs 1,200 cases).
fuzz: $(VENV)/.dev
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz_openapi.py -q

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
