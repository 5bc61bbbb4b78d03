# The two commands in the README. Each does the whole set-up first, so either works on a fresh clone.
.PHONY: setup demo test test-all lint
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/retrieval demo

# 2 workers (pytest-xdist), each test file on one of them: a file's module fixtures are built once.
test: setup
	.venv/bin/python -m pytest -m "not slow" -q -n 2 --dist loadfile

test-all: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
