"""Per-stage times and peak memory of a finished run, from Snakemake's benchmark files (prints a Markdown table).

    .venv/bin/python benchmarks/run_summary.py [--run smollm2-135m] [--results results]

Every job of the pipeline writes ``results/<run>/benchmarks/<stage>[_<shard>].tsv``: its wall time,
peak resident memory (``max_rss``) and CPU time. The timeline - when the axis was ready, when the
run ended - comes from when each file was written (the job's end) minus the job's wall time (its
start); the run starts with its first job. This is the table of the README's "Default run".
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from pathlib import Path

from assistant_axis.pipeline.layout import STAGES, RunLayout


def read_jobs(folder: Path) -> list[dict[str, float | str]]:
    """One dict per benchmark file: stage, shard, start, end (epoch s), seconds, max_rss (MB), cpu_time (s)."""
    jobs = []
    for path in sorted(folder.glob("*.tsv")):
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]
        stage, _, shard = path.stem.rpartition("_") if path.stem.rpartition("_")[2].isdigit() else (path.stem, "", "")
        seconds = float(row["s"])
        end = path.stat().st_mtime
        jobs.append({"stage": stage, "shard": shard, "start": end - seconds, "end": end, "seconds": seconds,
                     "max_rss": float(row.get("max_rss") or "nan"), "cpu_time": float(row.get("cpu_time") or "nan")})
    return jobs


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="smollm2-135m")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    layout = RunLayout(args.run, root=args.results)
    folder = Path(layout.benchmark("model")).parent
    jobs = read_jobs(folder)
    if not jobs:
        raise SystemExit(f"{folder}: no benchmark files; run the pipeline first (make run)")
    t0 = min(j["start"] for j in jobs)
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        by_stage[str(job["stage"])].append(job)
    print("| stage | jobs | wall time | started at | ended at | peak memory (max RSS) | CPU time |")
    print("|---|---|---|---|---|---|---|")
    for stage in [s for s in STAGES if s in by_stage]:
        group = by_stage[stage]
        wall = sum(float(j["seconds"]) for j in group)
        each = f" ({len(group)} x {_minutes(wall / len(group))})" if len(group) > 1 else ""
        print(f"| `{stage}` | {len(group)} | {_minutes(wall)}{each} | {_minutes(min(j['start'] for j in group) - t0)} | "
              f"{_minutes(max(j['end'] for j in group) - t0)} | {max(float(j['max_rss']) for j in group):,.0f} MB | "
              f"{_minutes(sum(float(j['cpu_time']) for j in group))} |")
    axis = [j for j in jobs if j["stage"] == "axis"]
    end = max(j["end"] for j in jobs)
    peak = max(jobs, key=lambda j: float(j["max_rss"]))
    if axis:
        print(f"\naxis ready after {_minutes(axis[0]['end'] - t0)}")
    print(f"whole run: {_minutes(end - t0)} from the first job's start to the last job's end")
    print(f"largest job: {peak['stage']}{'_' + str(peak['shard']) if peak['shard'] else ''}, "
          f"{float(peak['max_rss']):,.0f} MB peak resident memory")
    print(f"(benchmark files in {folder}; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
