# The two commands in the README. Each does the whole set-up first, so either works on a fresh clone.
.PHONY: setup demo test test-all lint
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/retrieval demo

test: setup
	.venv/bin/python -m pytest -m "not slow" -q

test-all: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
