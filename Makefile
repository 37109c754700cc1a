# forge-env developer commands. `make test` is what CI runs (.ci/run) on a fresh machine:
# it creates .venv, installs everything the tests need, and runs the whole suite.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# OpenEnv's real package, for the compatibility tests. Installed with --no-deps: its full
# dependency set pulls gradio (~476 MB). These are what its server, clients, validator and
# `openenv init` import.
OPENENV_PIN  := openenv==0.10.0
OPENENV_DEPS := requests 'fastmcp>=3,<4' tomli tomli-w typer rich openai

.PHONY: venv lint test test-fast test-docker docker-engine demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q $(OPENENV_DEPS)
	$(PIP) install -q --no-deps $(OPENENV_PIN)
	touch $@

venv: $(VENV)/.installed

## Static checks: pyflakes-level lint and type checks of the SDK, envs and apps.
lint: venv
	$(PY) -m ruff check forge_env envs apps bench tests
	$(PY) -m mypy

## The lint, then the whole suite, every marker included (openenv, slow, ...), and doctests.
test: venv lint
	scripts/install_sandbox_tools.sh $(VENV)
	$(PY) -m pytest -ra -q --doctest-modules forge_env envs apps tests

## A private Docker engine under .docker/ and the offline base image (cached).
docker-engine:
	scripts/docker_engine.sh start && scripts/docker_engine.sh base-image

## The Docker tests alone (they start the engine themselves when none answers).
test-docker: venv
	$(PY) -m pytest -q -m docker tests

## Unit tests only: quick feedback while editing.
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not openenv" tests

## The main job (until the training loop lands): serve guess_number and play it.
demo: venv
	$(PY) -m apps.demo

bench: venv
	$(PY) bench/env_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
