# Two set-up commands do everything from a fresh clone:
#   make demo   # builds .venv, installs ragsam, runs the demo
#   make test   # builds .venv, installs ragsam with test extras (and Debian's chromium for the
#               # browser tests, dicom3tools for the DICOM SEG validator, and Debian's orthanc +
#               # orthanc-dicomweb for the PACS tests, when missing and run as root), runs ruff and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch (small, from the local disk); a CUDA torch already installed is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	# Meta's DINOv2 reference for tests/models/test_dinov2_meta_parity.py: its metadata pins torch 2.0 and
	# xformers, the modules the test imports need torch alone, so it is installed without dependencies.
	$(BIN)/python -m pip install -q --no-deps dinov2==0.0.1.dev2
	# Meta's own SAM 2, the reference of tests/retrieval/test_sam2_meta_parity.py: without its
	# dependencies (they would replace the CPU torch; its video predictor needs no torchvision;
	# hydra-core and iopath come with the test extra) and without its CUDA extension.
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install -q --no-deps --no-build-isolation sam2==1.1.0
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ragsam demo --out demo-output --force

test: $(STAMP)
	bash tools/ensure-test-packages.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q --durations=20

clean:
	rm -rf $(VENV) demo-output
