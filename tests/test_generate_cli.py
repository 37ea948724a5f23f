"""``assistant-axis generate``: one prompt through the real CLI, with and without a cap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from assistant_axis.capping import calibrate
from assistant_axis.cli import main

CLI = str(Path(sys.executable).with_name("assistant-axis"))


@pytest.fixture()
def capping_file(tmp_path) -> Path:
    """A small calibrated config on a random axis; floors at high percentiles so they act."""
    axis = torch.randn(30, 576, generator=torch.Generator().manual_seed(0))
    config = calibrate(np.random.default_rng(0).normal(size=(40, 30)), axis, [(15, 17)], [0.01], model="embedded:smollm2-135m-instruct")
    config.recommended = config.experiments[0].id
    path = tmp_path / "capping.safetensors"
    config.save(path)
    return path


@pytest.mark.slow
def test_generate_with_cap_prints_reply_and_telemetry(capping_file):
    proc = subprocess.run(
        [CLI, "generate", "What is the capital of France?", "--system", "You are a pirate.", "--capping-config", str(capping_file),
         "--cap", "recommended", "--max-new-tokens", "6", "--dtype", "float32"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()  # the reply
    assert "capping layers_15:17-p0.01:" in proc.stderr
    assert "layer 15:" in proc.stderr and "layer 16:" in proc.stderr and "positions capped" in proc.stderr
    assert "capping" not in proc.stdout


def test_cap_arguments_are_checked_before_loading_a_model(capping_file, capsys):
    assert main(["generate", "hi", "--cap", "layers_15:17-p0.01"]) == 2
    assert "--cap needs --capping-config" in capsys.readouterr().err
    assert main(["generate", "hi", "--capping-config", str(capping_file), "--cap", "layers_1:2-p0.5"]) == 2
    assert "no capping experiment 'layers_1:2-p0.5'" in capsys.readouterr().err
    assert main(["generate", "hi", "--capping-config", str(capping_file)]) == 2
    assert "without --cap" in capsys.readouterr().err
