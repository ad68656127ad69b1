# One entry point. Every target creates or reuses the virtual environment at .venv/
# and reinstalls only when requirements.txt or pyproject.toml changed (`make test` adds the
# test-only lock, requirements-test.txt).
PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROFILE ?= smoke
# imagenet (downloads, online) | path to local weights | none (random init, explicit; offline)
WEIGHTS ?= imagenet
PYTEST_ARGS ?=
SERVE_ARGS ?=

# The CPU build of torch. The lock pins torch==2.13.0+cpu: PyPI's torch for Linux x86_64 is the CUDA
# build (about 4 GB more: nvidia-* libraries and triton), so pip needs a second source, used by
# `make venv` and `make lock` alike: a folder holding the +cpu wheel when there is one (this
# project's machines keep it in /opt/wheels), otherwise PyTorch's CPU index. Either can be set,
# e.g. `make venv TORCH_SOURCE="--find-links /my/wheels"`. GPU users: see the README ("GPU").
TORCH_WHEELS ?= /opt/wheels
TORCH_INDEX  ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE ?= $(if $(wildcard $(TORCH_WHEELS)/torch-*+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url $(TORCH_INDEX))

.PHONY: venv bench-deps test-deps test report report-full bench bench-short lab index serve clean-outputs lock

KERNEL_STAMP := $(VENV)/.kernel-installed

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SOURCE) -r requirements.txt -e .
	$(PY) -m pip install -q --no-deps $$($(EXTRA) detector)
	touch $(STAMP)

# Extras of pyproject.toml installed WITHOUT their dependencies, because each asks for `tensorflow`
# by name, which pip would add beside the locked `tensorflow-cpu` (same version, same tensorflow/
# folder, 0.6 GB more); tensorflow-cpu provides the module they import, and the lock holds their
# other dependencies. `pip check` reports exactly these two lines (tests/test_install.py checks it):
# - `detector` (keras-hub, notebook 09's lung detector; it requires tensorflow-text -> tensorflow),
#   installed by `make venv`;
# - `bench` (tf-keras: the benchmark's reference ImageDataGenerator), for `make bench` and
#   `make test` (the tests run the benchmarks).
EXTRA = $(PY) -c "import sys, tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies'][sys.argv[1]])"
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps $$($(EXTRA) bench)
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

TEST_STAMP := $(VENV)/.test-installed
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

test-deps: $(TEST_STAMP)

# The quiet kernelspec (TensorFlow/CUDA start-up logs and kernel warnings kept out of notebooks):
# reinstalled whenever src/cxrbook/workflow/kernel.py, which defines it, changes.
$(KERNEL_STAMP): $(STAMP) src/cxrbook/workflow/kernel.py
	$(PY) -m cxrbook kernel-install
	touch $(KERNEL_STAMP)

venv: $(STAMP) $(KERNEL_STAMP)      ## install (once) the environment and the Jupyter kernel "cxrbook"

test: venv bench-deps test-deps     ## run the test suite (real-data tests run when CXR_DATA_DIR is set)
	$(PY) -m pytest -q $(PYTEST_ARGS)

report: venv                        ## execute every notebook (PROFILE=smoke|full) into outputs/
	$(PY) -m cxrbook run --profile $(PROFILE) -p weights=$(WEIGHTS)

report-full:
	$(MAKE) report PROFILE=full

bench: venv bench-deps              ## speed benchmarks -> outputs/benchmarks.json
	$(PY) -m benchmarks

bench-short: venv bench-deps
	$(PY) -m benchmarks --short

# WEIGHTS reaches the notebooks as $$CXR_WEIGHTS (their `weights = ""` default reads it): make lab WEIGHTS=none
lab: venv                           ## open the notebooks in JupyterLab (WEIGHTS=none: offline)
	CXR_WEIGHTS=$(WEIGHTS) $(VENV)/bin/jupyter lab notebooks/

index: venv                         ## rebuild outputs/index.html from outputs/ (after working in JupyterLab)
	$(PY) -m cxrbook index

serve: venv                         ## the web app over outputs/models/ on http://127.0.0.1:8000 (SERVE_ARGS="--port 9000 --db URL")
	$(PY) -m cxrbook serve $(SERVE_ARGS)

clean-outputs:                      ## remove generated outputs (keeps outputs/README.md)
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

lock:                               ## regenerate the locks requirements.txt and requirements-test.txt from their .in files (pip-tools)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip-tools
	$(PY) -m piptools compile --no-emit-find-links --no-emit-index-url --no-strip-extras \
		$(TORCH_SOURCE) --output-file requirements.txt requirements.in
	$(PY) -m piptools compile --no-emit-find-links --no-emit-index-url --no-strip-extras \
		$(TORCH_SOURCE) --output-file requirements-test.txt requirements-test.in
