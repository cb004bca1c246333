# One command sets everything up and runs the main job on built-in demo data (`make demo`);
# one sets everything up and runs the tests (`make test`). Needs only Python 3.10+ and the
# package registries. torch is installed first, pinned to 2.13.0 (a CPU wheel), so that no
# multi-GB CUDA build is pulled in by the other packages.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.diffboost-installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-nnunet-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# nnU-Net v2 for its integration tests, without timm/torchvision (see requirements-nnunet-cpu.txt)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-nnunet-cpu.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
	touch $(STAMP)

demo: setup
	$(BIN)/diffboost demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs/demo .pytest_cache
