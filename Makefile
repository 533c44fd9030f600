# Every target creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The browser test (tests/test_dashboard_browser.py) drives Debian's chromium; install it when
# missing and apt can (root on Debian), else say so: that test then skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				chromium >/dev/null) || echo "note: could not install chromium with apt-get;" \
				"the browser test will skip"; \
		else \
			echo "note: chromium is missing and apt-get is unavailable (or not root);" \
				"the browser test will skip"; \
		fi; }

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python scripts/bench_hooks.py
	$(BIN)/python scripts/bench_cam.py
	$(BIN)/python scripts/bench_train.py
	test -f $(VENV)/peers/.lucent-0.1.8 || ($(BIN)/python -m pip install -q --no-deps --upgrade \
		--target $(VENV)/peers torch-lucent==0.1.8 kornia==0.4.1 decorator \
		&& touch $(VENV)/peers/.lucent-0.1.8)
	$(BIN)/python scripts/bench_featureviz.py
	test -f $(VENV)/peers/.quantus-0.6.0 || ($(BIN)/python -m pip install -q --no-deps --upgrade \
		--target $(VENV)/peers quantus==0.6.0 && touch $(VENV)/peers/.quantus-0.6.0)
	$(BIN)/python scripts/bench_metrics.py

clean:
	rm -rf $(VENV) vistool-out
