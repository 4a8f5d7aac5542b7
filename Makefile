# stemforge set-up and the two README commands.
#   make run   -> install, then the main job: simulate, train, publish, simulate a held-out scan, analyse it
#                 classically and with the trained model (scripts/pipeline.py, conf/pipeline.yaml)
#   make test  -> install, then run the test suite
PYTHON ?= python3
# Machines without an NVIDIA driver get the CPU build of torch; GPU machines resolve torch freely.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)

.PHONY: install run test
install: .install.stamp

.install.stamp: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m pip install $(CONSTRAINTS) -e ".[test]"
	@touch $@

run: install
	$(PYTHON) scripts/pipeline.py

test: install
	$(PYTHON) -m pytest
