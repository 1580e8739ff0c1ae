# evstack: two commands on a fresh machine.
#   make test   create .venv if missing, install evstack with its test extras, run the whole suite
#   make demo   run the demo on the shipped examples
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test test-slow demo bench docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "evstack needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

demo: $(STAMP)
	$(VENV)/bin/evstack demo

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

docs: $(STAMP)
	$(VENV)/bin/evstack registers --markdown > docs/register-map.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
