# The two commands that matter: `make demo` and `make test`. Both set up .venv from nothing
# (Python 3.11 and pip; node builds the JupyterLab extension) and are safe to rerun.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
IS_311 := -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'
EXTENSION := labextension/package.json labextension/yarn.lock $(wildcard labextension/src/*.ts labextension/style/*)

.PHONY: demo test system clean

# Users' machines write bytecode (__pycache__): so do the demo and the tests, whatever this shell says.
demo: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/caia demo

test: $(STAMP) system
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest

$(STAMP): pyproject.toml $(EXTENSION)
	@command -v node >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	@# a .venv of another Python is made anew; caia-jupyter runs on Python 3.11
	@$(BIN)/python $(IS_311) 2>/dev/null || { $(PYTHON) $(IS_311) || { echo "caia-jupyter needs Python 3.11: make PYTHON=python3.11 ..."; exit 2; }; rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,he,mlflow]'
	touch $(STAMP)

# Browser tests drive Debian's Chromium (no browser downloads here).
system:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) caia_jupyter/labextension caia_jupyter/contracts/_version.py labextension/node_modules labextension/lib test-artifacts
