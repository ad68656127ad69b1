# One entry point. Every target creates or reuses the virtual environment at .venv/
# and reinstalls only when requirements.txt or pyproject.toml changed.
PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROFILE ?= smoke
# imagenet (downloads, online) | path to local weights | none (random init, explicit; offline)
WEIGHTS ?= imagenet
PYTEST_ARGS ?=
SERVE_ARGS ?=

.PHONY: venv test report report-full bench bench-short lab serve clean-outputs lock

KERNEL_STAMP := $(VENV)/.kernel-installed

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $(STAMP)

# The quiet kernelspec (TensorFlow/CUDA start-up logs and kernel warnings kept out of notebooks):
# reinstalled whenever src/cxrbook/workflow/kernel.py, which defines it, changes.
$(KERNEL_STAMP): $(STAMP) src/cxrbook/workflow/kernel.py
	$(PY) -m cxrbook kernel-install
	touch $(KERNEL_STAMP)

venv: $(STAMP) $(KERNEL_STAMP)      ## install (once) the environment and the Jupyter kernel "cxrbook"

test: venv                          ## run the test suite (real-data tests run when CXR_DATA_DIR is set)
	$(PY) -m pytest -q $(PYTEST_ARGS)

report: venv                        ## execute every notebook (PROFILE=smoke|full) into outputs/
	$(PY) -m cxrbook run --profile $(PROFILE) -p weights=$(WEIGHTS)

report-full:
	$(MAKE) report PROFILE=full

bench: venv                         ## speed benchmarks -> outputs/benchmarks.json
	$(PY) -m benchmarks

bench-short: venv
	$(PY) -m benchmarks --short

lab: venv                           ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

serve: venv                         ## the web app over outputs/models/ on http://127.0.0.1:8000 (SERVE_ARGS="--port 9000 --db URL")
	$(PY) -m cxrbook serve $(SERVE_ARGS)

clean-outputs:                      ## remove generated outputs (keeps outputs/README.md)
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

lock:                               ## regenerate the lock requirements.txt from the loose requirements.in (pip-tools)
	$(PY) -m pip install -q pip-tools
	$(PY) -m piptools compile --no-emit-find-links --no-emit-index-url --no-strip-extras \
		--output-file requirements.txt requirements.in
