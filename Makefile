# The two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit newer-python bench soak clean install uninstall

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast,man]'
	touch $(STAMP)

## make run: start relay under supervisord in the foreground (intake on 127.0.0.1:10025,
## deliver forwarding to a local sink that writes a Maildir under var/).
run: $(STAMP)
	mkdir -p var/log var/spool var/maildir/tmp var/maildir/new var/maildir/cur
	chmod 700 var/spool
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/supervisord -n -c supervisord.conf

## make test: ruff, mypy --strict and the whole pytest suite.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check common spool intake deliver tools tests bench packaging

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not soak"

## make newer-python PYTHON=python3.13 VENV=.venv-3.13: the tests of what leans on
## asyncio's internals (intake's engine, the timeouts inside its commands: PROXY header,
## greeting delay, filters, verifiers) on another Python than the one `make test` used.
NEWER_PYTHON_TESTS := tests/test_compat_asyncio.py tests/test_intake_engine.py \
	tests/test_intake_proxy.py tests/test_intake_programs.py tests/test_intake_server.py \
	tests/test_builtin_filters.py tests/test_compat_aiosmtpd.py tests/test_intake_paths.py
newer-python: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -p no:cacheprovider $(NEWER_PYTHON_TESTS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

soak: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m soak -s tests/test_soak.py

## make install: relay for production (see docs/operations.md, "Installing"). Every path
## can be changed, and DESTDIR puts them all under a staging directory for packaging.
PREFIX ?= /opt/relay
SYSCONFDIR ?= /etc/relay
SPOOL_DIR ?= /var/spool/relay
UNITDIR ?= /etc/systemd/system
LOGDIR ?= /var/log/relay
RUNDIR ?= /run/relay
RELAY_USER ?= relay
FORWARD_TO ?=
DESTDIR ?=
INSTALL_ARGS = --prefix '$(PREFIX)' --destdir '$(DESTDIR)' --sysconfdir '$(SYSCONFDIR)' \
	--spool-dir '$(SPOOL_DIR)' --unitdir '$(UNITDIR)' --logdir '$(LOGDIR)' --rundir '$(RUNDIR)' \
	--user '$(RELAY_USER)' --forward-to '$(FORWARD_TO)'

install: $(STAMP)
	$(BIN)/python packaging/install.py install $(INSTALL_ARGS)

uninstall: $(STAMP)
	$(BIN)/python packaging/install.py uninstall $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
