# The two entry points of the README. Both set up .venv first (idempotent).
CORES ?= all
SNAKEMAKE = .venv/bin/snakemake

.PHONY: run test setup setup-dev report lint

run: setup
	$(SNAKEMAKE) --cores $(CORES) --profile workflow/profiles/local
	$(SNAKEMAKE) --cores $(CORES) --profile workflow/profiles/local --report results/report.html

test: setup-dev
	.venv/bin/ruff check src tests workflow/scripts benchmarks
	.venv/bin/python -m pytest -ra --durations=30

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

report:
	$(SNAKEMAKE) --cores 1 --report results/report.html

lint:
	.venv/bin/ruff check src tests workflow/scripts benchmarks
