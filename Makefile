# The two commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is optional for the package; the CPU build below is what the tests and examples use.
TORCH  ?= torch==2.13.0

.PHONY: demo test install

$(BIN)/lerobot-assets: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,torch]"
	touch $@

install: $(BIN)/lerobot-assets

demo: install
	$(BIN)/lerobot-assets demo

test: install
	sh tests/support/ui_setup.sh $(BIN)/python
	sh tests/support/pg_setup.sh
	$(BIN)/python -m pytest -q
