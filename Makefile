# pedseg: `make demo` and `make test` work from a fresh clone (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
REPRO_DIR ?= reproduce
REPRO_PRESET ?= small
HELDOUT_DIR ?= reproduce-heldout
JOINTS := ankle knee shoulder
TORCH_VERSION ?= 2.13.0
# Where torch comes from: empty = the index pip is configured with; on an ordinary machine without a GPU,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (torch's CPU build, not the multi-GB CUDA one).
TORCH_INDEX ?=
# `make wheelhouse`: pedseg's wheel and every dependency, for `pip install --no-index --find-links` offline.
WHEELHOUSE ?= wheelhouse
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export RAY_USAGE_STATS_ENABLED=0

.PHONY: demo reproduce reproduce-heldout test test-slow lint bench wheelhouse clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pedseg.demo --out $(DEMO_DIR)

# The paper's ablation on synthetic data (13 cells; resumes when re-run): see docs/reproduction.md.
reproduce: $(STAMP)
	test -f $(REPRO_DIR)/data/shoulder/dataset.json || $(BIN)/pedseg data synth $(REPRO_DIR)/data --seed 0
	$(BIN)/pedseg reproduce $(foreach j,$(JOINTS),--data $(j)=$(REPRO_DIR)/data/$(j)) \
		--out $(REPRO_DIR)/$(REPRO_PRESET) --preset $(REPRO_PRESET)

# The same on held-out data from a second, independently written phantom generator (24 + 8 cases per joint).
reproduce-heldout: $(STAMP)
	test -f $(HELDOUT_DIR)/data/shoulder/dataset.json || $(BIN)/python -m simulations.heldout_phantoms $(HELDOUT_DIR)/data --seed 7
	$(BIN)/pedseg reproduce $(foreach j,$(JOINTS),--data $(j)=$(HELDOUT_DIR)/data/$(j)) \
		--out $(HELDOUT_DIR)/$(REPRO_PRESET) --preset $(REPRO_PRESET)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

# Every benchmark, one after the other (hours on 2 cores), into benchmarks/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a machine with internet access and the hospital server's Python version and OS (the pip of .venv, made if
# missing, builds it); build/lib is setuptools' staging folder, emptied so that no module removed from the tree
# is packed.
wheelhouse:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -rf build/lib
	$(BIN)/python -m pip wheel --wheel-dir $(WHEELHOUSE) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		torch==$(TORCH_VERSION) .

clean-demo:
	rm -rf $(DEMO_DIR)
