"""What several commands share: finding the axis (a file, or a pipeline run's) and the model that goes with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..axis import check_axis_layer, load_axis
from ..pipeline.layout import RunLayout
from ..pipeline.model import read_model_json
from ..storage import InputError


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
    if value in (None, ""):
        return None
    if not str(value).isdigit():
        raise InputError(path, "metadata 'target_layer'", f"is {value!r}, not a layer number", "rerun the axis stage, or pass --axis with --layer")
    return int(value)


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


def check_axis_fits(source: AxisSource, spec: str, layer: int, facts: object | None = None) -> None:
    """Refuse an axis that does not fit the model before loading any weights: layer count, hidden size, layer row.

    An axis of another model would otherwise fail deep in a matrix product with a traceback, or
    (same hidden size, other depth) measure the wrong layer silently. ``facts`` defaults to
    :func:`assistant_axis.models.describe_model` of ``spec`` (config.json only, no weights).
    """
    from ..models import describe_model

    facts = facts or describe_model(spec)
    layers, hidden = int(facts.total_layers), facts.hidden_size  # type: ignore[attr-defined]
    n, d = source.axis.shape
    fix = f"use the axis computed for {spec} (or pass --model for the model this axis belongs to)"
    if n != layers:
        raise InputError(source.path, "field 'axis'", f"has {n} layers but {spec} has {layers}", fix)
    if hidden is not None and d != int(hidden):
        raise InputError(source.path, "field 'axis'", f"has hidden size {d} but {spec} has {hidden}", fix)
    check_axis_layer(source.axis, layer, source.path)


def check_capping_fits(config: object, path: str | os.PathLike[str], spec: str, facts: object | None = None) -> None:
    """Refuse a capping file whose layers or vector length do not fit the model (checked before loading weights)."""
    from ..models import describe_model

    facts = facts or describe_model(spec)
    layers, hidden = int(facts.total_layers), facts.hidden_size  # type: ignore[attr-defined]
    fix = f"use a capping file calibrated for {spec}"
    for layer, vector in config.vectors_by_layer().items():  # type: ignore[attr-defined]
        if not 0 <= layer < layers:
            raise InputError(path, f"layer {layer}", f"is outside the {layers} layers of {spec}", fix)
        if hidden is not None and vector.numel() != int(hidden):
            raise InputError(path, f"layer {layer} vector", f"has length {vector.numel()} but {spec} has hidden size {hidden}", fix)
