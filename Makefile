# Two commands for a fresh machine:  `make demo` (set up, run the main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench gpu-check lint install-check clean tiny-decoders

setup: $(STAMP)

# torch comes from the package registry by name; the same build runs on CPU and GPU.
# tests/plugin: an out-of-tree plug-in package the tests use, installed through its entry points
$(STAMP): pyproject.toml tests/plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e tests/plugin
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onellm demo

# the demo's tiny SAM and UNet (configs/weights/tiny_decoders.safetensors), made again with the
# repository's recipe (~20 min on 2 cores); one thread, as they were made: cmp says whether
# the bytes are the same
TINY_DECODERS := configs/weights/tiny_decoders.safetensors
tiny-decoders: $(STAMP)
	rm -rf runs/tiny-decoders
	OMP_NUM_THREADS=1 $(BIN)/onellm train stage5a_decoder_pretrain vars.root=runs/tiny-decoders
	$(BIN)/onellm export runs/tiny-decoders/stage5a/final runs/tiny-decoders/tiny_decoders.safetensors --keys 'outputs.*.decoder.*'
	cmp runs/tiny-decoders/tiny_decoders.safetensors $(TINY_DECODERS) && echo "the same bytes as $(TINY_DECODERS)"

# two pytest-xdist workers of one torch thread each: 5.5 minutes on 2 cores against 9.3 for
# one process on both threads (the tests are small models, so a second process is worth more)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m bench.run

# on a CUDA machine: the gpu-marked tests (bitsandbytes 8-bit/NF4 loading too: pip install
# -e ".[cuda-quant]"), then the GPU bench (bench/gpu_results.json)
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py tests/modeling/test_quantize.py
	$(BIN)/python -m bench.gpu

# the wheel, core only, in a fresh venv, used from a temporary directory; then the serve extra
install-check: $(STAMP)
	bash .ci/install_check.sh

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache build dist *.egg-info tests/plugin/*.egg-info
