# Two entry points: `make demo` runs the whole factory on the demo, `make test` runs every test.
# Both create .venv and install what they need, so they work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean sysdeps

# Bytecode is compiled at install (as pip does; uv does not by default): where
# PYTHONDONTWRITEBYTECODE is set, nothing else ever writes it, and every start, the console's
# included, would compile textual and the rest from source again.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m compileall -q agents console
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/factory demo $(DEMO_ARGS)

# The sandbox tests need bubblewrap, docker.io (with dockerd answering) and tmux: install what
# is missing when we can (root with apt), start dockerd unless `docker info` answers, else
# say what to do. One script does it for CI and for `make test` alike.
sysdeps:
	@bash .ci/run --sysdeps

test: $(STAMP) sysdeps
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check agents console tests
	$(BIN)/ruff format --check agents console tests

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_store.py
	$(BIN)/python tests/bench/bench_swarm.py
	$(BIN)/python tests/bench/bench_step_parts.py
	$(BIN)/python tests/bench/bench_sandbox.py
	$(BIN)/python tests/bench/bench_console.py
	$(BIN)/python tests/bench/bench_decide.py

clean:
	rm -rf $(VENV) .factory demo-run
