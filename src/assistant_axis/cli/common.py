"""What several commands share: finding the axis (a file, or a pipeline run's) and the model that goes with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..axis import load_axis
from ..pipeline.layout import RunLayout
from ..pipeline.model import read_model_json


@dataclass
class AxisSource:
    """Where an axis came from, and the model and layer that go with it."""

    axis: torch.Tensor
    path: Path
    model: str | None  # model spec recorded by the run (None for a bare --axis file)
    target_layer: int | None


def _axis_target_layer(path: Path) -> int | None:
    """The target layer the axis stage recorded in the file's metadata (None for other files)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get("target_layer")
    return int(value) if value not in (None, "") else None


def resolve_axis(axis: str | None, run: str | None, results_dir: str | os.PathLike[str] = "results") -> AxisSource:
    """``--axis FILE`` or ``--run NAME`` (the run's ``axis/axis.safetensors`` and ``model/model.json``)."""
    if (axis is None) == (run is None):
        runs = sorted(p.parents[1].name for p in Path(results_dir).glob("*/axis/axis.safetensors"))
        hint = f" (runs with an axis under {results_dir}/: {', '.join(runs)})" if runs else ""
        raise ValueError(f"give exactly one of --axis FILE or --run NAME{hint}")
    if axis is not None:
        path = Path(axis)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such axis file")
        return AxisSource(load_axis(path), path, None, None)
    layout = RunLayout(str(run), str(results_dir))
    path = Path(layout.axis)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the pipeline for run {run!r} first (snakemake)")
    facts = read_model_json(layout.model_json)
    layer = _axis_target_layer(path)
    return AxisSource(load_axis(path), path, str(facts["spec"]), int(facts["target_layer"]) if layer is None else layer)
