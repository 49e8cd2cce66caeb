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

lab: $(STAMP)
	$(PY) -m ipykernel install --user --name python3 --display-name "Python 3 (clipdg-nb)"
	$(VENV)/bin/jupyter lab notebooks/

clean-outputs:
	rm -rf outputs/
