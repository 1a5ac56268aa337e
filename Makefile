# ragsnv: every target builds what it needs from nothing (a venv in $(VENV)).
# GPU users: make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' EXTRAS=gpu,dev
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,dev
BIN    := $(VENV)/bin
DEMO   ?= demo
SEED   ?= 1

.PHONY: install test demo lint bench compare clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/pytest -q --durations=10 tests

lint: install
	$(BIN)/ruff check ragprep stores ragtrain tests

demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/ragprep simulate --out $(DEMO)/panel.vcf.gz --samples 500 --length 1e6 --seed $(SEED)
	$(BIN)/ragprep encode $(DEMO)/panel.vcf.gz --out $(DEMO)/store.zarr --seed $(SEED)
	$(BIN)/ragprep inspect $(DEMO)/store.zarr

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info
