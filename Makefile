# Two commands on a fresh machine: `make demo` (the offline default) and `make test`.
# Both create .venv when absent and install the package into it (torch from this machine's disk).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipdg-installed

.PHONY: demo test lab install clean-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import clipdg_nb, torch, open_clip, wilds"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clipdg demo

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

clean-outputs:
	rm -rf outputs/
