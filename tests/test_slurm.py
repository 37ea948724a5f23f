"""The tiny pipeline on a real single-node SLURM through the official executor plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, tiny_config, write_config
from slurm_helpers import local_slurm, local_slurm_unavailable, snakemake_slurm_cmd

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_tiny_pipeline_runs_on_slurm(tmp_path: Path) -> None:
    reason = local_slurm_unavailable()
    if reason:  # a hard failure, not a skip: the cluster test is part of what CI must show
        pytest.fail(f"cannot start the local SLURM: {reason}")
    write_config(tmp_path, tiny_config(shards=2, threads=1))
    target = "results/tiny/calibrate/capping_config.pt"
    cmd = snakemake_slurm_cmd(tmp_path, [target, "--snakefile", str(REPO / "Snakefile")], timeout_s=900)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # jobs re-enter this venv
    with local_slurm():
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        jobs = subprocess.run(["sacct", "-n", "-X", "-o", "JobName%40,State", "-S", "now-1hours"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    axis = torch.load(tmp_path / "results" / "tiny" / "axis" / "axis.pt", weights_only=True)["axis"]
    assert axis.shape == (30, 576)
    assert torch.load(tmp_path / target, weights_only=True)["experiments"]
    # the heavy rules really went through SLURM
    assert "COMPLETED" in jobs.stdout
    assert "submitted" in (proc.stdout + proc.stderr).lower()
