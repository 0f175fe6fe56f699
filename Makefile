# The whole set-up on a fresh machine is `make demo` or `make test`: both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?=
export PYTHONHASHSEED := 0

JOBS ?=
.PHONY: setup system-deps test test-fast demo bench bench-grader bench-cluster clean release validate lab handout autograde feedback export formgrader manual-sheet manual-import examples report

# bubblewrap sandboxes student code while it is graded; chromium checks the web report.
SYSTEM_PACKAGES := bubblewrap chromium chromium-driver
system-deps:
	@missing=""; for b in bwrap chromium chromedriver; do command -v $$b >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(SYSTEM_PACKAGES)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "note: install $(SYSTEM_PACKAGES) (e.g. sudo apt-get install $(SYSTEM_PACKAGES)); grading and the report need them"; fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cluster]'
	$(PY) -m ipykernel install --sys-prefix --name ioi-anomalies --display-name "Python (ioi-anomalies)" >/dev/null
	touch $(STAMP)

setup: system-deps $(STAMP)

# TEST_WORKERS pytest-xdist workers (0: one process); tests that share an expensive fixture (a solution's
# run, the report, the graded class) run on one worker, so each is built once (tests/conftest.py).
# The suite is bound by CPU: `make test PYTEST_ARGS=--cpu-profile` prints the CPU seconds of each group of tests.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder,)
test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The inner loop: everything but the end-to-end tests marked slow (sandboxed grading of whole
# notebooks, the browser, the hand-out install). `make test` runs them all.
test-fast: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The model at work, the expected-output pages (build/report/, which the notebooks link), then the
# instructor's tour: release, grade the example class, print the table.
demo: setup
	$(PY) -m tools.demo $(if $(MODEL),--model $(MODEL),) --out demo-output
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m tools.report
	HF_HUB_OFFLINE=1 $(PY) -m grader demo $(if $(JOBS),--jobs $(JOBS),)

clean:
	rm -rf $(VENV) build demo-output

# The engine against the plain implementation (tools.bench), then the grading benchmarks (BENCH_ARGS="--n 4": short).
bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m tools.bench
	HF_HUB_OFFLINE=1 $(PY) -m grader.bench $(BENCH_ARGS)

# One full submission (plain nbgrader vs the project's grader, cold and warm reference cache), then N submissions on 1 vs 2 workers,
# then fresh vs warm sandboxes.
bench-grader: setup
	HF_HUB_OFFLINE=1 $(PY) -m grader.bench --only one --only jobs --only warm $(BENCH_ARGS)

# The same submissions graded locally (JOBS=2) and on a 2-worker Dask LocalCluster (BENCH_ARGS="--n 4": a short run).
bench-cluster: setup
	HF_HUB_OFFLINE=1 $(PY) -m grader.bench --only cluster $(BENCH_ARGS)

# The instructor's grading commands (settings: grader/grader_config.toml; python -m grader --help).
autograde: setup
	$(PY) -m grader autograde $(if $(JOBS),--jobs $(JOBS),) $(if $(CLUSTER),--cluster $(CLUSTER),) $(ASSIGNMENTS)

feedback: setup
	$(PY) -m grader feedback $(ASSIGNMENTS)

export: setup
	$(PY) -m grader export $(ASSIGNMENTS)

manual-sheet: setup
	$(PY) -m grader manual-sheet $(ASSIGNMENTS)

manual-import: setup
	@test -n "$(FILE)" || (echo "usage: make manual-import FILE=grader/manual_grades.csv" && exit 2)
	$(PY) -m grader manual-import $(FILE)

# The instructor's JupyterLab on the repository, with nbgrader's tools (PORT=8890 to choose the port).
formgrader: setup
	$(PY) -m grader formgrader $(if $(PORT),--port $(PORT),)

# The expected-output pages: every notebook solved and run, shown as released, in build/report/ (offline HTML).
report: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m tools.report

# The student hand-out of a graded course: build/handout/ioi-anomalies-handout/ and its .tar.gz.
handout: report
	$(PY) -m tools.handout

examples: setup
	$(PY) -m grader.examples

release: setup
	$(PY) -m grader release $(ASSIGNMENTS)

# A student's self-check: visible tests of one notebook, plain-text report, exit 1 while one fails.
validate: setup
	@test -n "$(NB)" || (echo "usage: make validate NB=work/<assignment>/<assignment>.ipynb" && exit 2)
	IOI_ANOMALIES_MODEL=$${IOI_ANOMALIES_MODEL:-embedded} HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m ioi_anomalies.validate $(NB)

# The student's JupyterLab on their own copy of the assignments in work/ (PORT=8890, HEADLESS=1: no browser).
lab: setup
	$(PY) -m tools.lab $(if $(PORT),--port $(PORT),) $(if $(HEADLESS),--headless,)
