# The two entry points of the README. Both set up .venv first (idempotent).
CORES ?= all
# Tests run in two pytest-xdist workers, a module per worker (--dist loadscope keeps a module's
# fixtures in one process); the one finished pipeline run that the slow modules share is made once
# for both workers (tests/conftest.py `shared_run`, under a file lock). Serial: make test PYTEST_WORKERS=
PYTEST_WORKERS ?= -n 2 --dist loadscope
SNAKEMAKE = .venv/bin/snakemake

.PHONY: run test setup setup-dev report lint

run: setup
	$(SNAKEMAKE) --cores $(CORES) --profile workflow/profiles/local
	$(SNAKEMAKE) --cores $(CORES) --profile workflow/profiles/local --report results/report.html

test: setup-dev
	.venv/bin/ruff check src tests workflow/scripts benchmarks
	.venv/bin/python -m pytest -ra --durations=30 $(PYTEST_WORKERS)

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

report:
	$(SNAKEMAKE) --cores 1 --report results/report.html

lint:
	.venv/bin/ruff check src tests workflow/scripts benchmarks
