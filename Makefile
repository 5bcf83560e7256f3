# lmcache-server developer loop. `make run` and `make test` work on a fresh machine:
# they create .venv and install core plus every plugin (editable) first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every distribution in the repository except the template (which third parties copy).
PLUGIN_DIRS := $(filter-out plugins/_template,$(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))) \
               $(patsubst %/pyproject.toml,%,$(wildcard lmcache_plugin_*/pyproject.toml))
PYPROJECTS  := pyproject.toml $(addsuffix /pyproject.toml,$(PLUGIN_DIRS))
STAMP  := $(VENV)/.installed

HTTP_HOST ?= 127.0.0.1
HTTP_PORT ?= 8080
# The embedded default: 1 GB L1 and an FS L2 under ./.lmcache/ (stores are written behind to it).
RUN_ARGS  ?= --http-host $(HTTP_HOST) --http-port $(HTTP_PORT) --l1-size-gb 1 \
             --l2-adapter '{"type":"fs","base_path":".lmcache"}'
PYTEST_ARGS ?=

.PHONY: install run test test-thirdparty bench soak interop dist clean

install: $(STAMP)

$(STAMP): $(PYPROJECTS) VERSION
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned (torch==2.13.0) by lmcache-core; a CPU build is enough for CPU workers.
	# Each plugin with its own test extra where it has one (the s3 plugin's: moto[server]).
	$(BIN)/python -m pip install -q -e '.[test]' $(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]')
	touch $@

run: $(STAMP)
	$(BIN)/lmcache-server $(RUN_ARGS)

# pytest exit 5 ("no tests collected") is a failure here.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The core's whole suite with a third-party plugin installed (issue 16; ~15 min): wheels of the core
# and of every plugin (make dist) and of acme-lmcache (a plugin written from the docs) in a fresh
# venv, nothing editable; only torch and the other third-party dependencies come from .venv.
# tests/thirdparty_env.py builds it (so does tests/test_third_party_plugin.py) and runs pytest there.
test-thirdparty: $(STAMP)
	$(BIN)/python tests/thirdparty_env.py $(PYTEST_ARGS)

# The reliability campaign (issue 18): 10 minutes of load, faults and checks; one JSON report.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/lmcache-server bench chaos --duration $(SOAK_SECONDS)

bench: $(STAMP)
	$(BIN)/lmcache-server bench all
	$(BIN)/python -m lmcache_plugin_fs.bench

# Interoperability with the real LMCache 0.5.6 (installed by interop/install-peer.sh in its own
# venv when missing, at $LMCACHE_PEER_VENV or ~/.cache/lmcache-peer/venv; it is never a
# dependency of lmcache-server).
interop: $(STAMP)
	bash interop/install-peer.sh
	$(BIN)/python -m pytest interop -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make interop: pytest collected no tests" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	# The same workload through both servers, with our/theirs ratios (figures, not pass/fail).
	LMCACHE_BENCH_SEQUENCES=4 LMCACHE_BENCH_LOOKUPS=100 $(BIN)/lmcache-server bench datapath

# A wheel and an sdist of the core and of every plugin into $(DIST)/, all at the version in
# VERSION. Built without isolation by the venv's setuptools and build (the test extra pins
# both), so no package index is needed. Install the ones you choose, e.g.
#   pip install --find-links dist "lmcache-core[fs,health,metrics]"
DIST ?= dist
dist: $(STAMP)
	mkdir -p $(DIST)
	rm -f $(DIST)/lmcache_core-* $(DIST)/lmcache_plugin_*
	for d in . $(PLUGIN_DIRS); do $(BIN)/python -m build -q --no-isolation --outdir $(DIST) $$d || exit 1; done
	ls $(DIST)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
