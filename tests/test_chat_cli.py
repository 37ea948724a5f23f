"""``assistant-axis chat`` in a real pseudo-terminal with the embedded model, then ``project`` on its transcript."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pexpect
import pytest
import torch

from assistant_axis.axis import save_axis
from assistant_axis.capping import calibrate
from assistant_axis.cli import main
from assistant_axis.cli.chat import meter, sparkline

EXE = str(Path(sys.executable).with_name("assistant-axis"))
PROJECTION = r"axis L15: ([+-]\d+\.\d+)"


def test_meter_and_sparkline():
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([2.0, float("nan")]) == "▅ "
    line = meter([1.0, 3.0], layer=15, capped=True, width=10)
    assert line.startswith("axis L15: +3.00 [##########]") and "change +2.00" in line and line.endswith("[capped]")
    assert "n/a" in meter([1.0, float("nan")], layer=15, capped=False)


@pytest.mark.slow
def test_chat_session_in_a_pty_then_project_reads_the_transcript(tmp_path):
    axis = torch.randn(30, 576, generator=torch.Generator().manual_seed(3))
    axis_path = tmp_path / "axis.safetensors"
    save_axis(axis, axis_path)
    cap_path = tmp_path / "capping.safetensors"
    calibrate(np.random.default_rng(0).normal(size=(50, 30)), axis, [(15, 17)], [0.25]).save(cap_path)
    saved = tmp_path / "chat.json"

    child = pexpect.spawn(
        EXE,
        ["chat", "--axis", str(axis_path), "--capping-config", str(cap_path), "--max-new-tokens", "12",
         "--temperature", "0", "--dtype", "float32", "--device", "cpu"],
        cwd=str(tmp_path), encoding="utf-8", timeout=180, dimensions=(40, 200),
    )
    try:
        child.expect_exact("you> ")
        child.sendline("Hello! Who are you?")
        child.expect_exact("assistant> ")
        child.expect(PROJECTION)
        first = float(child.match.group(1))
        child.expect_exact("you> ")
        child.sendline("/cap on")
        child.expect_exact("capping on (layers_15:17-p0.25)")
        child.expect_exact("you> ")
        child.sendline("Tell me about the sea.")
        child.expect(PROJECTION)
        child.expect(r"trend \S+  \[capped\]")
        child.expect_exact("you> ")
        child.sendline(f"/save {saved}")
        child.expect_exact("saved 2 turns")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before

    data = json.loads(saved.read_text())
    assert data["turns"] == 2 and data["steering"] == "mixed" and data["capped_turns"] == [2]
    assert data["steering_config"]["layers"] == [15, 16]
    assert [m["role"] for m in data["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert data["projections"][0] == pytest.approx(first, abs=0.006)  # the screen shows 2 decimals

    out = tmp_path / "table.csv"
    assert main(["project", str(saved), "--axis", str(axis_path), "--dtype", "float32", "--device", "cpu",
                 "--out-csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["turn"].tolist() == [1, 2]
    # turn 1 was written and measured without capping in the chat: project (no capping) agrees
    assert table["projection"].iloc[0] == pytest.approx(data["projections"][0], rel=1e-4, abs=1e-4)
    assert all(math.isfinite(v) for v in table["projection"])
