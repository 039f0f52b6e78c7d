# The two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
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
	$(BIN)/ruff check common spool intake deliver tools tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not soak"

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

soak: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m soak -s tests/test_soak.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
