# Everything installs into .venv first; each target below works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= train,teachers,dev,deepspeed
# The tested versions of every dependency (pyproject.toml states only ranges); CONSTRAINTS= to
# install the newest versions the ranges allow instead.
CONSTRAINTS ?= constraints.txt

.PHONY: install test test-fast demo demo-data lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

# Unit tests only: nothing that launches ranks (marker multiproc), needs SLURM (marker slurm) or
# is an opt-in slow test (marker slow).
test-fast: install
	$(BIN)/python -m pytest -m "not multiproc and not slurm and not slow"

# The built-in data: synthetic placenta pairs and natural crops of scikit-image photographs.
demo-data: install
	$(BIN)/vlcd shards placenta --synthetic 2000 --out shards/demo/placenta
	$(BIN)/vlcd shards natural --count 5000 --out shards/demo/natural

# The whole method on the built-in data (2 ranks on a 2-CPU host); prints the report table.
demo: demo-data
	$(BIN)/vlcd demo --out runs/demo

# ruff, and the import contract of pyproject.toml ([tool.importlinter]: the layers, no cycles).
lint: install
	$(BIN)/ruff check vlcd_dist tests bench
	$(BIN)/ruff format --check vlcd_dist tests bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/synthetic_difficulty.py
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/multi_student.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
