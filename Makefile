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
	$(PY) -m pip install -q -c constraints.txt -e ".[test,bench,ui,ray,judge]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gooddrag demo

# The second line re-runs the goldens and other kernel-sensitive tests on the oldest x86-64 kernel
# set torch ships (tests/golden/kernels.py, "default": ATen, MKL and oneDNN all capped), so a golden
# that holds only on the machine that made it fails here, not on a user's machine.
KERNEL_TESTS := tests/test_golden.py tests/test_behaviour.py \
	tests/test_sdxl.py::test_sd_output_unchanged_to_float_noise \
	tests/test_speed.py::test_benchmark_script_on_the_tiny_model_writes_every_phase_of_every_path

# Two pytest workers (pytest-xdist): each test runs torch on one thread (tests/conftest.py), so on
# 2 cores one worker alone leaves a core idle. A file's tests stay on one worker (its module
# fixtures, e.g. the served web app, are made once).
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: $(STAMP)
	$(PYTEST)
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 $(PYTEST) $(KERNEL_TESTS)
