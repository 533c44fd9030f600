# Every target creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean chromium peers mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The browser test (tests/test_dashboard_browser.py) drives Debian's chromium; install it when
# missing and apt can (root on Debian). apt's output goes to .venv/apt-chromium.log and is shown
# when the install fails; the test then skips with the reason (under CI=true it fails).
chromium: | $(BIN)/python
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium with apt-get (log: $(VENV)/apt-chromium.log)"; \
			(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
				>$(VENV)/apt-chromium.log 2>&1 || { cat $(VENV)/apt-chromium.log; \
				echo "note: could not install chromium with apt-get (its output is above);" \
				"the browser test will skip (and fail under CI=true)"; }; \
		else \
			echo "note: chromium is missing and apt-get is unavailable (or not root);" \
				"the browser test will skip (and fail under CI=true)"; \
		fi; }

# The reference implementations the tests compare with (tests/conftest.py: require_peer), pinned
# and installed without their dependencies into their own folder, which the tests append to
# sys.path: pytorch-grad-cam and torchcam would pull opencv-python, which clashes with the
# project's opencv-python-headless (they import cv2, which that provides). Reinstalled when the
# pins change. pip's output is shown when it fails.
PEERS := $(VENV)/peers
TEST_PEERS := grad-cam==1.5.7 ttach==0.0.3 torchcam==0.5.0 quantus==0.6.0
PEER_STAMP := $(PEERS)/.test-$(shell echo '$(TEST_PEERS)' | cksum | cut -d' ' -f1)

$(PEER_STAMP): | $(STAMP)
	@echo "installing the test peers into $(PEERS): $(TEST_PEERS)"
	@$(BIN)/python -m pip install --no-deps --upgrade --target $(PEERS) $(TEST_PEERS) \
		>$(VENV)/pip-peers.log 2>&1 || { cat $(VENV)/pip-peers.log; exit 1; }
	@rm -f $(PEERS)/.test-*
	@touch $@

peers: $(PEER_STAMP)

test: $(STAMP) $(PEER_STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

# Mutation testing ([tool.mutmut] in pyproject.toml says which modules and tests); mutmut is
# installed here only. `.venv/bin/mutmut results` lists the surviving mutants afterwards.
# MUTANTS narrows the run, e.g. make mutation MUTANTS='vistool.evaluate.sanity*' (the whole
# pass takes hours on 2 cores). One thread per process: mutmut forks its test runs, and a
# forked child of a process whose OpenMP pool has run deadlocks.
MUTANTS ?=
mutation: $(STAMP) $(PEER_STAMP)
	$(BIN)/python -m pip install -q mutmut==3.8.1
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run $(MUTANTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The peers come from .venv/peers (see above), not from the bench extra, which would pull
# opencv-python into the project's environment.
bench: $(STAMP) $(PEER_STAMP)
	$(BIN)/python scripts/bench_hooks.py
	PYTHONPATH=$(PEERS) $(BIN)/python scripts/bench_cam.py
	$(BIN)/python scripts/bench_train.py
	test -f $(VENV)/peers/.lucent-0.1.8 || ($(BIN)/python -m pip install -q --no-deps --upgrade \
		--target $(VENV)/peers torch-lucent==0.1.8 kornia==0.4.1 decorator \
		&& touch $(VENV)/peers/.lucent-0.1.8)
	$(BIN)/python scripts/bench_featureviz.py --steps 32,64,128,256 --rounds 1 --cases lucent,floor,vistool --examples 128
	$(BIN)/python scripts/bench_metrics.py

clean:
	rm -rf $(VENV) vistool-out mutants
