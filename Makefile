# rootedgan: `make demo` runs the embedded finetune demo, `make test` installs and runs the tests.
# Both create a local virtualenv in .venv on first use.
#
# Which PyTorch: on a machine without an NVIDIA GPU, the CPU build from PyTorch's CPU wheel index (no
# multi-GB CUDA libraries); with a GPU (nvidia-smi lists one), PyPI's default CUDA build. Set TORCH_INDEX
# to another index (or to nothing: PyPI's default) and TORCH_SPEC to pin a version. When the index cannot
# be reached (a machine that reaches only PyPI), PyPI's default build is installed instead.

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch
HAS_NVIDIA_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)
TORCH_INDEX ?= $(if $(HAS_NVIDIA_GPU),,https://download.pytorch.org/whl/cpu)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test wheel-check lint format demo demo-baseline bench gpu-wheels gpu-check gpu-rehearsal clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) "$(TORCH_SPEC)" || ,)$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	# clean-fid without its dependencies: it needs torchvision only for its legacy Inception model, and a
	# torchvision that does not match the installed torch (e.g. any torchvision next to a CPU torch)
	# makes `import torchmetrics`, and so `import lightning`, fail. rootedgan.metrics shims that import.
	$(PY) -m pip install --quiet --no-deps "clean-fid>=0.1.35"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# pytest exits 5 when it collects no test: treat that as a failure, not a silent pass.
test: lint
	$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# the wheel alone: built, installed into a fresh venv outside the checkout, `rootedgan demo` + `generate` there
wheel-check: install
	bash .ci/wheel_check.sh $(PY)

demo: install
	$(VENV)/bin/rootedgan demo

# the same finetune with the rooted and the logistic loss (same seed and budget), compared
demo-baseline: install
	$(VENV)/bin/rootedgan demo --baseline

# all benchmarks on this machine (cuda when available), JSON in bench/results, tables into README.md
bench: install
	$(PY) bench/run_all.py

# The GPU check (bench/gpu_check.py, README "GPU check"). A lent device machine has torch, lightning,
# torchmetrics, torchvision, scipy, ... but not these pure-Python packages: download them here into the
# ignored .whl/ (pure-Python wheels, so any platform matches), then carry .whl to the device.
GPU_WHEELS := jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 clean-fid==0.1.35
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	ls .whl

# On the GPU machine (`python3` there holds torch): installs .whl, builds the ops, runs pytest -m gpu,
# the training/FID/ops benchmarks and NVIDIA's train.py (when .ref/stylegan3 is there), into $(GPU_OUT).
GPU_OUT ?= $(if $(OUT),$(OUT),bench/results/gpu-check)
gpu-check:
	python3 bench/gpu_check.py --out $(GPU_OUT)

# The same script on this CPU: every step's code path on tiny sizes (CI runs it through the tests).
gpu-rehearsal: install
	$(PY) bench/gpu_check.py --cpu-rehearsal --out bench/results/gpu-rehearsal

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
