# Two commands for a fresh machine:  `make demo` (set up, run the main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench gpu-check lint clean

setup: $(STAMP)

# torch comes from the package registry by name; the same build runs on CPU and GPU
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onellm demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run

# on a CUDA machine: the gpu-marked tests (bitsandbytes 8-bit/NF4 loading too: pip install
# -e ".[cuda-quant]"), then the GPU bench (bench/gpu_results.json)
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py tests/test_quantize.py
	$(BIN)/python -m bench.gpu

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
