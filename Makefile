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
RUN_ARGS  ?= --http-host $(HTTP_HOST) --http-port $(HTTP_PORT) --l1-size-gb 1
PYTEST_ARGS ?=

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned (torch==2.13.0) by lmcache-core; a CPU build is enough for CPU workers.
	$(BIN)/python -m pip install -q -e '.[test]' $(addprefix -e ,$(PLUGIN_DIRS))
	touch $@

run: $(STAMP)
	$(BIN)/lmcache-server $(RUN_ARGS)

# pytest exit 5 ("no tests collected") is a failure here.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/lmcache-server bench all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
