"""How long ``snakemake -n`` takes, and what the parse step imports (prints figures; not a test).

    .venv/bin/python benchmarks/bench_planning.py [--repeat 5]

Times a dry run of the default config in the repository (a finished run after ``make run``: "Nothing
to be done") and of ``config/paper.yaml`` (the paper's three models: every job planned), as
``snakemake -n`` runs them, median of ``--repeat`` runs, with the CPU time beside the wall time (on
a shared machine the wall time waits for the cores). Then it lists the heavy modules the parse step
imports (there should be none: model facts come from ``model.json``, ``config.json`` or the built-in
table). Target: <= 3 s on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
HEAVY = ("torch", "transformers", "vllm", "sklearn", "matplotlib", "pandas")


def dry_run(args: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its output) of one ``snakemake -n`` run in the repository."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, "-n", "--cores", "2", *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def heavy_imports(args: list[str]) -> tuple[list[str], list[str]]:
    """Heavy modules the dry run imports: those of the parse step (via assistant_axis or the Snakefile) and all."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "2", "-q", *args],
                          cwd=ROOT, capture_output=True, text=True)
    names = [line.split("|")[-1] for line in proc.stderr.splitlines() if line.startswith("import time:")]
    top = {n.strip() for n in names}
    heavy = [m for m in HEAVY if m in top]
    if "pandas" in heavy and "snakemake_executor_plugin_slurm.efficiency_report" in top:
        heavy[heavy.index("pandas")] = "pandas (by Snakemake's SLURM executor plugin, loaded at start-up)"
    return heavy, [n.strip() for n in names if n.strip().startswith("assistant_axis")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = {"default config (config/config.yaml)": [], "paper config (config/paper.yaml)": ["--configfile", "config/paper.yaml"]}
    print(f"load average {os.getloadavg()[0]:.1f} (machine shared with other work)")
    for label, extra in cases.items():
        runs = [dry_run(extra) for _ in range(args.repeat)]
        done = "Nothing to be done" in runs[-1][2]
        heavy, ours = heavy_imports(extra)
        print(f"{label}: {'finished run, nothing to do' if done else 'jobs planned'}; wall {statistics.median(r[0] for r in runs):.2f} s, "
              f"CPU {statistics.median(r[1] for r in runs):.2f} s (median of {args.repeat})")
        print(f"  heavy modules imported during the dry run: {', '.join(heavy) or 'none'}")
        print(f"  project modules imported: {', '.join(dict.fromkeys(ours))}")


if __name__ == "__main__":
    main()
