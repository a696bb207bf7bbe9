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
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export RAY_USAGE_STATS_ENABLED=0

.PHONY: demo reproduce reproduce-heldout test test-slow lint bench clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pedseg.demo --out $(DEMO_DIR)

# The paper's ablation on synthetic data (13 cells; resumes when re-run): see README, "Reproduction".
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

clean-demo:
	rm -rf $(DEMO_DIR)
