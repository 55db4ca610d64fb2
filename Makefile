# The two commands of the README: `make up` runs hermes-flare locally,
# `make test` runs every test. Both install what they need first.
SHELL := /bin/bash
VENV  := .venv/bin
CONFIG ?= hermes-flare.yaml

.PHONY: up test setup lint typecheck pytest worker-test bench schema clean

setup:
	@./scripts/setup

up: setup
	$(VENV)/flared up -c $(CONFIG)

test:
	@./scripts/setup --test
	$(VENV)/ruff check flared tests bench
	$(VENV)/ruff format --check flared tests bench
	$(VENV)/mypy
	@./scripts/test-suites

bench: setup
	$(VENV)/python bench/run.py

schema: setup
	$(VENV)/flared schema > schema/hermes-flare.schema.json
	$(VENV)/python -m flared.config.docgen > docs/config.md

# Deletes the state dir and caches, never a snapshot store (see scripts/clean).
clean:
	@python3 $(dir $(abspath $(lastword $(MAKEFILE_LIST))))scripts/clean
