# The two commands of the README: `make build` (main job) and `make test` (test suite).
# Both set the machine up first (scripts/setup.sh installs only what is missing).
PY := .venv/bin/python

.PHONY: setup build test

setup:
	bash scripts/setup.sh

build: setup
	.venv/bin/asvit build --preset fmnist-cpu --out builds/fmnist-cpu

test: setup
	$(PY) -m pytest -q --durations=15
