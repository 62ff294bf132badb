# The two commands: `make run` and `make test`. Each creates .venv when absent and installs the
# project in one pinned resolve; later calls reinstall only when pyproject or the pins change.
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dicom,train,dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | cksum | cut -d' ' -f1)
ARGS   ?=

.PHONY: run test install lint bench constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints-cpu.txt
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install  ## generate the demo dump (if absent) and run the demo DAG; ARGS='dag=labels ...' to change
	$(BIN)/python -m pipeline.run $(ARGS)

test: install  ## the whole test suite (real Dask clusters, real Parquet, real spaCy)
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check pipeline tests bench notebooks
	$(BIN)/ruff format --check pipeline tests bench notebooks

bench: install  ## every benchmark script; each prints its own figures
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

constraints: install  ## re-pin after changing dependencies (review the diff)
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' \
	  | { echo "# One resolve for CPU machines (Python 3.11): pip install -c constraints-cpu.txt -e '.[$(EXTRAS)]'"; \
	      echo "# Regenerate with: make constraints"; cat; } > constraints-cpu.txt

clean:
	rm -rf $(VENV) runs data/demo .pytest_cache
