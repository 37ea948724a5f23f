"""Run the real Snakefile on a tiny config in a temporary folder (not a test module)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY_ROLES = ["default", "pirate", "ghost", "witch", "poet", "robot"]


def tiny_config(**over: Any) -> dict[str, Any]:
    """A CI-sized config: 5 roles + default, 1 prompt x 2 questions, 8 new tokens.

    The backend is HF, explicitly: the golden test pins this run's texts, which only HF reproduces
    (vLLM samples differently); the vLLM path has its own tests.
    """
    cfg: dict[str, Any] = {
        "models": {"tiny": {"model": "embedded:smollm2-135m-instruct", "backend": "hf", "dtype": "float32", "device": "cpu"}},
        "roles_dir": str(REPO / "resources" / "roles"),
        "questions_file": str(REPO / "resources" / "extraction_questions.jsonl"),
        "roles": TINY_ROLES,
        "prompts_per_role": 1,
        "questions_per_role": 2,
        "default_prompts": 2,
        "shards": 2,
        "threads": 2,
        "generation": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 0},
        "batch_size": 8,
        "judge": {"backend": "offline", "model": "heuristic-v2"},
        "role_vectors": {"score": 3, "min_count": 1},
        "capping": {"windows": [[10, 12], [14, 16]], "percentiles": [0.25, 0.5]},
        "capping_eval": {
            "percentiles": [0.25],
            "n_jailbreaks": 4,
            "n_mc": 8,
            "n_perplexity": 4,
            "generation": {"temperature": 0.0, "max_new_tokens": 8, "seed": 0},
            "batch_size": 8,
        },
    }
    for key, value in over.items():
        cfg[key] = value
    return cfg


def write_config(workdir: Path, cfg: dict[str, Any]) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(
        ["timeout", "-k", "10", str(int(timeout)), *cmd],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute, read from its job listing."""
    out = snakemake(workdir, "-n", env=env).stdout
    jobs: list[list[str]] = []
    for line in out.splitlines():
        rule = re.match(r"^(?:local)?rule (\w+):", line)
        if rule:
            jobs.append([rule.group(1), ""])
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and jobs:
            jobs[-1][1] = wildcards.group(1)
    return [(r, wc) for r, wc in jobs]
