"""Run the real Snakefile on a tiny config in a temporary folder (not a test module)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY_ROLES = ["default", "pirate", "ghost", "witch", "poet", "robot"]
TRAITS = ["mystical", "dramatic", "analytical", "cautious"]
N_BOOT = 200
SEED = 0
CONF = 0.95


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


def shared_config(other_model: Path) -> dict[str, Any]:
    """The config of the one finished run the slow tests share (tests/conftest.py `shared_run`).

    The tiny config (two shards: tests/data/golden pins its texts and numbers) plus a second run
    (a tiny random Llama 3, no capping: cheap) and every analysis on, so the stage tests, the
    stale-rerun dry runs and the analysis recomputations all read one run instead of three.
    """
    # the role and question files are private copies inside the run (relative paths, so a copy of
    # the run reads its own): a stale-rerun test edits them without touching resources/
    cfg = tiny_config(roles_dir="roles", questions_file="questions.jsonl")
    cfg["models"]["other"] = {"model": str(other_model), "backend": "hf", "dtype": "float32", "device": "cpu", "capping": {"enabled": False}}
    # the offline heuristic finds few trait words in 16 tokens of a 135M model: keep every pos reply,
    # filter the neg side (<= 50), so both thresholds are exercised
    cfg["trait_vectors"] = {"enabled": True, "traits": TRAITS, "pairs_per_trait": 1, "questions_per_trait": 2, "max_new_tokens": 16,
                            "positive_min": 0, "negative_max": 50}
    cfg["drift"] = {"enabled": True, "domains": ["coding", "therapy"], "conversations_per_domain": 2, "turns": 2,
                    "max_new_tokens": 8, "user_max_new_tokens": 8}
    cfg["drift_analysis"] = {"enabled": True, "folds": 2}
    cfg["stability"] = {"enabled": True, "n_bootstrap": 20}
    cfg["uncertainty"] = {"n_bootstrap": N_BOOT, "confidence": CONF, "seed": SEED}
    return cfg


def copy_run(src: Path, dest: Path) -> Path:
    """A private copy of a finished run (timestamps kept, so it is as up to date as the original),
    for tests that edit inputs or rerun stages: the shared run must stay untouched."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def write_inputs(workdir: Path) -> None:
    """Copy the files `shared_config` points to into ``workdir``: the tiny roles' files and the questions."""
    (workdir / "roles" / "instructions").mkdir(parents=True, exist_ok=True)
    for role in TINY_ROLES:
        shutil.copy(REPO / "resources" / "roles" / "instructions" / f"{role}.json", workdir / "roles" / "instructions")
    shutil.copy(REPO / "resources" / "extraction_questions.jsonl", workdir / "questions.jsonl")


def read_config(workdir: Path) -> dict[str, Any]:
    """The config a run was made with (to change one key and write it back)."""
    return yaml.safe_load((workdir / "config" / "config.yaml").read_text())
