# Two commands for a fresh machine with Python 3.10+:  `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test clean

# The stamp file re-runs the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/optbench run $(ARGS)

# Tests run in JOBS processes (pytest-xdist), one torch thread each: most of the suite is
# end-to-end runs of the real CLI, and two single-threaded ones use two cores better than one
# run whose tiny ops leave a second thread waiting.
JOBS ?= 2
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(JOBS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
