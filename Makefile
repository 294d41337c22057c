# Two commands cover set-up: `make demo` and `make test` (both create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo demo-vidtok lavit-tiny test test-fast lint clean

install: $(STAMP)

# uv installs the same pinned set (constraints.txt) in ~30 s where pip takes ~85 s. uv does
# not read pip's configuration, so it is handed pip's find-links (on our CPU machines the
# local CPU build of torch lies there; without it the CUDA build would be downloaded), and
# it byte-compiles like pip does (else every test process compiles torch anew when
# PYTHONDONTWRITEBYTECODE is set). Where uv cannot be installed or fails, pip does it all.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	links=$$($(BIN)/python -m pip config list 2>/dev/null \
	    | sed -n "s/^[^=]*find-links='\(.*\)'$$/\1/p" | tr ' ' '\n' | sort -u | sed 's/^/--find-links=/'); \
	if $(BIN)/python -m pip install -q -c constraints.txt uv \
	    && $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt $$links -e ".[dev]"; \
	then :; else \
	  echo "uv could not install: installing with pip"; \
	  $(BIN)/pip install -c constraints.txt -e ".[dev]"; \
	fi
	touch $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash launch/demo.sh

# The second demo (the LLM over a tiny VidTok's latents and codes): not part of `make demo`
# nor of the tests; see README "The VidTok demo".
demo-vidtok: install
	PATH="$(abspath $(BIN)):$$PATH" bash launch/demo_vidtok.sh

# Video-LaVIT at tiny size, every part and every mode (README "Video-LaVIT"); the tests run it
# at fewer steps (tests/launch/test_lavit_tiny.py).
lavit-tiny: install
	PATH="$(abspath $(BIN)):$$PATH" bash launch/lavit_tiny.sh

# worksteal: the worker busy with the demo (started first) keeps no queue of its own; the
# other takes the tests as it goes, whole runs of a module at a time, so module fixtures
# (a 2-rank training run) are built once. The 30 slowest tests are listed at the end.
test: install
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=30

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check divot_llm data_recipes tests tools launch

clean:
	rm -rf $(VENV) outputs .pytest_cache
