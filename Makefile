# Both targets create .venv when it is missing and install torch==2.13.0 (the CPU wheel on disk)
# before the project, constrained so that no dependency replaces it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
STARDIST_VENV := .venv-stardist
STARDIST_STAMP := $(STARDIST_VENV)/.installed
CELLPOSE_VENV := .venv-cellpose
CELLPOSE_STAMP := $(CELLPOSE_VENV)/.installed
NNUNET_VENV := .venv-nnunet
NNUNET_STAMP := $(NNUNET_VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/unetseg demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# The benchmarks' peers (MONAI, smp, ONNX Runtime) live in their own venv: smp pulls torchvision, which must
# never land beside the project's torch in .venv. torch is pinned there too (constraints.txt).
$(BENCH_STAMP): pyproject.toml constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[bench,dask]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) $(STARDIST_STAMP) $(CELLPOSE_STAMP) $(NNUNET_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/run.py

# The instance benchmark's peers (benchmarks/instances.py), each in its own venv: StarDist on TensorFlow
# (2.15: the last with Keras 2, which stardist/csbdeep are written for), Cellpose 3 on the pinned CPU torch.
# An install that fails leaves no venv and its reason in .venv-NAME.log; instances.py reports it.
$(STARDIST_STAMP):
	rm -rf $(STARDIST_VENV) && $(PY) -m venv $(STARDIST_VENV)
	( $(STARDIST_VENV)/bin/python -m pip install -q --upgrade pip && \
	  $(STARDIST_VENV)/bin/python -m pip install -q "tensorflow-cpu==2.15.*" "numpy<2" "stardist>=0.9" \
	  "csbdeep>=0.7" pillow tifffile ) > $(STARDIST_VENV).log 2>&1 && touch $@ || \
	  { echo "stardist: install failed, see $(STARDIST_VENV).log"; rm -rf $(STARDIST_VENV); }

$(CELLPOSE_STAMP):
	rm -rf $(CELLPOSE_VENV) && $(PY) -m venv $(CELLPOSE_VENV)
	( $(CELLPOSE_VENV)/bin/python -m pip install -q --upgrade pip && \
	  $(CELLPOSE_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0 && \
	  $(CELLPOSE_VENV)/bin/python -m pip install -q -c constraints.txt "cellpose>=3,<4" pillow ) \
	  > $(CELLPOSE_VENV).log 2>&1 && touch $@ || \
	  { echo "cellpose: install failed, see $(CELLPOSE_VENV).log"; rm -rf $(CELLPOSE_VENV); }

# The nnU-Net reference (benchmarks/reference_nnunet.py), in its own venv on the pinned CPU torch. nnunetv2
# pulls timm and, through it, torchvision from the index: a CUDA build that breaks against the CPU torch
# ("operator torchvision::nms does not exist") once nnU-Net's trainer search imports its Primus trainers.
# Neither is needed for nnU-Net's U-Nets, so both go; reference_nnunet.py keeps the Primus module from loading.
$(NNUNET_STAMP):
	rm -rf $(NNUNET_VENV) && $(PY) -m venv $(NNUNET_VENV)
	( $(NNUNET_VENV)/bin/python -m pip install -q --upgrade pip && \
	  $(NNUNET_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0 && \
	  $(NNUNET_VENV)/bin/python -m pip install -q -c constraints.txt nnunetv2==2.8.1 && \
	  $(NNUNET_VENV)/bin/python -m pip uninstall -y torchvision timm && \
	  $(NNUNET_VENV)/bin/python -c "import nnunetv2.run.run_training, nibabel, tifffile, PIL" ) \
	  > $(NNUNET_VENV).log 2>&1 && touch $@ || \
	  { echo "nnunet: install failed, see $(NNUNET_VENV).log"; rm -rf $(NNUNET_VENV); }

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(STARDIST_VENV) $(CELLPOSE_VENV) $(NNUNET_VENV) build dist src/*.egg-info
