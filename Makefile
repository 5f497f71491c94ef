# Quickstart on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the package with the pinned
# versions of constraints.txt (the install the tests are run with).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,bench,ui,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gooddrag demo

test: $(STAMP)
	$(PY) -m pytest -q
