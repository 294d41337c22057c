# Two commands cover set-up: `make demo` and `make test` (both create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash launch/demo.sh

test: install
	$(BIN)/python -m pytest -n 2 --maxschedchunk 8

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check divot_llm data_recipes tests tools launch

clean:
	rm -rf $(VENV) outputs .pytest_cache
