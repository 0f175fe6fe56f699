# The whole set-up on a fresh machine is `make demo` or `make test`: both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?=
export PYTHONHASHSEED := 0

.PHONY: setup test demo bench clean release validate lab

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name ioi-anomalies --display-name "Python (ioi-anomalies)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m ioi_anomalies.demo $(if $(MODEL),--model $(MODEL),) --out demo-output

clean:
	rm -rf $(VENV) build demo-output

bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m ioi_anomalies.bench $(BENCH_ARGS)

release: setup
	$(PY) -m grader release $(ASSIGNMENTS)

validate: setup
	@test -n "$(NB)" || (echo "usage: make validate NB=notebooks/<assignment>/<assignment>.ipynb" && exit 2)
	IOI_ANOMALIES_MODEL=$${IOI_ANOMALIES_MODEL:-embedded} $(PY) -m grader validate $(NB)

lab: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)
