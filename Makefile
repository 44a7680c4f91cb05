# Two commands do all the set-up on a fresh machine:
#   make run    installs the environment (once) and runs the main job on the embedded default
#               (results/default/table1.csv, copied to results/table1.csv; CONFIG=params/tiny.yaml runs
#               another params file)
#   make test   installs the environment (once) and runs the test suite
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 8
# Another params file, e.g. `make run CONFIG=params/tiny.yaml`; its results go to results/<its name>/.
CONFIG ?=
SNAKEMAKE = snakemake --cores $(CORES)
CONFIG_ARGS = $(if $(CONFIG),--configfile $(CONFIG))
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1

.PHONY: install run ablations test test-fast bench gpu-check report clean-results dvc-yaml readme-results

install: $(STAMP)

# Reinstalls only when pyproject.toml (the one place with the pins) changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,postgres]'
	touch $@

# Table 1 of the params file (results/<name>/table1.csv, copied to results/table1.csv). The others
# name a rule as the target.
run: $(STAMP)
	$(SNAKEMAKE) results/table1.csv $(CONFIG_ARGS)

# The README's results section, generated from results/ and the timing of a Snakemake run: the latest, or
# LOG=.snakemake/log/<date>.snakemake.log (after `make run`); several logs of the same run repeated (oldest
# first, each in its own clone's .snakemake/log/) give each one's wall time and the last one by stage;
# TIMING_ONLY=1 rewrites the timing section alone (a rerun of table 1 timed, the ablation rows kept).
readme-results: $(STAMP)
	$(BIN)/amflow readme-results $(if $(CONFIG),--params $(CONFIG)) $(if $(LOG),--log $(LOG)) $(if $(TIMING_ONLY),--timing-only)

ablations: $(STAMP)
	$(SNAKEMAKE) ablations $(CONFIG_ARGS)

# The report target, then Snakemake's HTML report of it (REPORT, default report.html): Snakemake writes
# that report only from outputs that exist, so the run comes first.
REPORT ?= report.html
report: $(STAMP)
	$(SNAKEMAKE) report $(CONFIG_ARGS)
	snakemake report --report $(REPORT) $(CONFIG_ARGS)

# The whole suite, end-to-end tests included (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the slow end-to-end tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark of the project; each prints its figures.
bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Verify a GPU machine in one command (sized for at most 8 minutes on one GPU): results/gpu_check.json
# and results/gpu_check.md.
# Without CUDA it says so in one line and fails.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

# The DVC pipeline of the params file: dvc.yaml for the default, pipelines/<name>/dvc.yaml for CONFIG.
dvc-yaml: $(STAMP)
	amflow dvc-yaml $(if $(CONFIG),--params $(CONFIG))

clean-results:
	rm -rf results logs .snakemake
