# The two commands of the README: `make build` (main job) and `make test` (test suite; with CI set, the
# end-to-end tests marked slow run after it).
# Both set the machine up first (scripts/setup.sh installs only what is missing).
PY := .venv/bin/python

.PHONY: setup build test

setup:
	bash scripts/setup.sh

build: setup
	.venv/bin/asvit build --preset fmnist-cpu --out builds/fmnist-cpu

test: setup
	$(PY) -m pytest -q --durations=15 -m 'not slow'
	if [ -n "$$CI" ]; then $(PY) -m pytest -q -m slow; fi  # end-to-end runs of a minute each: in CI, after the suite
