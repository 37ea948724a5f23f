"""The pipeline on a real single-node SLURM through the official executor plugin.

Two runs of the workflow share one cluster: the tiny embedded-model pipeline, and a paper-shaped
config (three tiny models of the paper's architectures as runs, each with its own per-model
settings) submitted through the project's SLURM profile, whose jobs must ask SLURM for exactly
the GPUs and memory the plan sized from each model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pipeline_helpers import REPO, tiny_config, write_config
from slurm_helpers import local_slurm, local_slurm_unavailable, slurm_answers, snakemake_slurm_cmd
from tiny_models import build_tiny_model

from assistant_axis.pipeline.plan import prepare

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    reason = local_slurm_unavailable()
    if reason:  # a hard failure, not a skip: the cluster test is part of what CI must show
        pytest.fail(f"cannot start the local SLURM: {reason}")
    with local_slurm():
        yield
    # A cluster this module stopped must not stay the machine's SLURM config: a stale
    # /etc/slurm/slurm.conf makes every later Snakemake start wait ~10 s (the SLURM plugin's
    # `scontrol show config` retries the absent controller).
    if not slurm_answers():
        conf = Path("/etc/slurm/slurm.conf")
        assert not (conf.is_symlink() and "aa-slurm" in os.readlink(conf)), f"{conf} still links the stopped cluster"


def _env() -> dict[str, str]:
    # jobs re-enter this venv through srun; models are local folders, so no hub access at all
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


PROFILE = REPO / "workflow" / "profiles" / "slurm"


def test_tiny_pipeline_runs_on_slurm_through_the_shipped_profile(cluster: None, tmp_path: Path) -> None:
    """The shipped profile, unchanged, runs the tiny pipeline; each SLURM job id Snakemake printed
    (and no other job, e.g. the start script's smoke job) is looked up in sacct and COMPLETED."""
    write_config(tmp_path, tiny_config(shards=2, threads=1))
    target = "results/tiny/calibrate/capping_config.pt"
    cmd = snakemake_slurm_cmd(tmp_path, [target, "--snakefile", str(REPO / "Snakefile"), "--profile", str(PROFILE), "--retries", "0"],
                              timeout_s=900)
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    axis = torch.load(tmp_path / "results" / "tiny" / "axis" / "axis.pt", weights_only=True)["axis"]
    assert axis.shape == (30, 576)
    assert torch.load(tmp_path / target, weights_only=True)["experiments"]
    jobs = _submitted(log)
    # every model job of both shards went to SLURM (retries 0: exactly one submission each)
    assert sorted((j["rule"], j["run"]) for j in jobs.values()) == sorted(
        (rule, "tiny") for rule in ("generate", "extract", "judge") for _ in range(2)), jobs
    states = _sacct(jobs)
    assert set(states) == set(jobs), (states, jobs)  # sacct knows every job id we submitted
    assert all(s["State"] == "COMPLETED" for s in states.values()), states


# ------------------------------------------------------------------------------------------------
# a paper-shaped config through the SLURM profile


def _paper_shaped(dirs: dict[str, Path]) -> dict[str, Any]:
    """Like config/paper.yaml (per-model target layer, capping, storage, GPUs), at CI size."""
    cfg = tiny_config(shards=1, threads=1)
    common = {"backend": "hf", "dtype": "float32", "device": "auto", "gpus": 1}
    cfg["models"] = {
        "gemma2-tiny": {"model": str(dirs["gemma2"]), **common, "target_layer": 2, "capping": {"enabled": False}},
        "qwen3-tiny": {"model": str(dirs["qwen3"]), **common, "target_layer": 3, "capping": {"windows": [[3, 5]]},
                       "extraction": {"storage_dtype": "bfloat16"}},
        "llama3-tiny": {"model": str(dirs["llama3"]), **common, "capping": {"windows": [[4, 6]]},
                        "extraction": {"storage_dtype": "float16", "layers": [3, 4, 5]}},
    }
    return cfg


def _submitted(log: str) -> dict[str, dict[str, str]]:
    """SLURM job id -> rule, run and resources of the Snakemake job it carries, read from Snakemake's output."""
    blocks: dict[str, dict[str, str]] = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:)", log, flags=re.M):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        jobid = re.search(r"^\s+jobid: (\d+)", block, re.M)
        if rule and jobid:
            run = re.search(r"run=([^,\s]+)", block)
            res = re.search(r"^\s+resources: (.*)$", block, re.M)
            fields = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
            blocks[jobid.group(1)] = {"rule": rule.group(1), "run": run.group(1) if run else "", **fields}
    return {slurm: blocks[job] for job, slurm in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)}


def _sacct(jobs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """State, requested memory and allocated TRES of exactly these SLURM jobs."""
    if not jobs:
        return {}
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(jobs), "-o", "JobID,State,ReqMem,AllocTRES"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: {"State": r[1], "ReqMem": r[2], "AllocTRES": r[3]} for r in rows}


def test_paper_shaped_config_runs_through_the_slurm_profile(cluster: None, tmp_path: Path) -> None:
    dirs = {family: build_tiny_model(family, tmp_path / "models" / family) for family in ("gemma2", "qwen3", "llama3")}
    cfg = _paper_shaped(dirs)
    config_file = tmp_path / "paper-tiny.yaml"
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # up to the axis and the calibration (capping evaluation and drift are left to test_tiny_pipeline)
    targets = ["results/gemma2-tiny/axis/axis.pt", "results/qwen3-tiny/calibrate/capping_config.pt",
               "results/llama3-tiny/calibrate/capping_config.pt"]
    cmd = snakemake_slurm_cmd(tmp_path, [*targets, "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config_file),
                                         "--profile", str(PROFILE),
                                         "--retries", "0"], timeout_s=1500)  # every first attempt must succeed
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]

    # outputs: every run has its axis, the capped ones their calibration
    for run in cfg["models"]:
        res = tmp_path / "results" / run
        assert torch.load(res / "axis" / "axis.pt", weights_only=True)["axis"].shape == (6, 64)
        assert (res / "calibrate" / "capping_config.pt").exists() is (run != "gemma2-tiny")
    ids = {e["id"] for e in torch.load(tmp_path / "results" / "llama3-tiny" / "calibrate" / "capping_config.pt",
                                       weights_only=True)["experiments"]}
    assert ids == {"layers_4:6-p0.25", "layers_4:6-p0.5"}

    # every model job went to SLURM and completed, asking for the GPU and memory the plan sized for its model
    plan = prepare(cfg, REPO / "config" / "config.schema.yaml", REPO, [str(config_file)]).plan
    jobs = _submitted(log)
    heavy = {(j["rule"], j["run"]) for j in jobs.values()}
    assert heavy == {(rule, run) for run in cfg["models"] for rule in ("generate", "extract", "judge")}
    states = _sacct(jobs)
    assert set(states) == set(jobs)
    for slurm_id, job in jobs.items():
        want = plan.resources(job["run"], job["rule"])
        got = states[slurm_id]
        assert got["State"] == "COMPLETED", (job, got)
        assert got["ReqMem"] == f"{want['mem_mb']}M", (job, got, want)
        assert ("gres/gpu=1" in got["AllocTRES"]) is (want["gpu"] == 1), (job, got, want)
        assert int(job["mem_mb"]) == want["mem_mb"] and int(job.get("gpu", 0)) == want["gpu"]
