# Two commands on a fresh machine: `make demo` (the offline default) and `make test`.
# Both create .venv when absent and install the package into it, every dependency at the version
# requirements.lock pins (torch from this machine's disk). `make lock` refreshes the lock.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipdg-installed
LOCK := requirements.lock

.PHONY: demo test lab install lock clean-outputs bench gpu-check readme-numbers

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import clipdg_nb, torch, open_clip, wilds"
	touch $(STAMP)

install: $(STAMP)

# The lock: pyproject's dependencies (with the dev extra) resolved afresh in a temporary venv, every
# installed version pinned (the package itself left out). Commit the result; tests/test_packaging.py
# checks that it pins every dependency and that environment.yml names the same versions.
LOCK_VENV := $(shell mktemp -u /tmp/clipdg-lock-XXXXXX)
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	{ echo "# Every package \`pip install -e '.[dev]'\` installed, resolved afresh by \`make lock\` on $$(date -u +%F)"; \
	  echo "# (Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')). make install installs with \`pip install -c requirements.lock\`."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

demo: $(STAMP)
	$(VENV)/bin/clipdg demo

# The number tables of README.md and docs/*.md, rewritten from the demo's run records (after make demo; `--check` in the tests).
readme-numbers: $(STAMP)
	$(PY) tools/readme_numbers.py

test: $(STAMP)
	$(PY) -m pytest -q

# JupyterLab at the repository root (notebooks/, parameters/, outputs/ all in its file browser).
# The kernel "Python (clipdg-nb)" goes into the venv itself (--sys-prefix): nothing user-wide, and
# the user's own python3 kernelspec is left alone. The lab offers that kernel only, so every notebook
# opens with it, while the files keep naming `python3` for papermill and CI (a save writes python3
# back); why: clipdg_nb/pipeline/lab.py, which prints the server options. Extra options:
# make lab LAB_ARGS='--port=8890'.
LAB_ARGS ?=
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name clipdg-nb --display-name "Python (clipdg-nb)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $$($(PY) -m clipdg_nb.pipeline.lab) $(ALLOW_ROOT) $(LAB_ARGS)

# Every benchmark, one table naming the CPU: make bench (full sizes, long) or make bench BENCH_ARGS=--smoke.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The GPU check: one table (training MFU, eval, augmentation, cache reads, a real-size point, DDP, the
# paper grids' GPU-hours) against its targets; smoke sizes without a GPU. It needs no venv: on a GPU
# machine with torch but no venv it runs the system python3 with the repository on PYTHONPATH
# (open_clip and wilds carried as wheels: benchmarks/gpu_wheels.sh). GPU_CHECK_ARGS='--out DIR'.
GPU_CHECK_ARGS ?=
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH="$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))" $(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean-outputs:
	rm -rf outputs/
