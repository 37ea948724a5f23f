"""Stage ``calibrate``: per-layer capping floors at percentiles of every response's projection, for a grid of windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..axis import load_axis, project_all_layers
from ..capping import calibrate
from ..plots import calibration_plot
from ..roles import DEFAULT_ROLE
from ..storage import write_text
from .extract import iter_role_activations

log = logging.getLogger(__name__)


def calibrate_capping(
    *, activations: Sequence[str], axis: str, windows: list[list[int]], percentiles: list[float], model: str,
    target_layer: int, config_out: str, reference_out: str, table_out: str, plot_out: str, cap_first_token: bool,
) -> None:
    """Per-layer floors from every role-play and default response (no judge filter), as in the reference.

    Responses are projected role by role (memory holds one role's activations, not the run's);
    layers that extraction did not store get NaN projections and are never calibrated (the config
    check keeps every window inside the stored layers).
    """
    ax = load_axis(axis)
    parts, roles = [], []
    for chunk in iter_role_activations(activations):
        proj_chunk = torch.full((chunk.acts.shape[0], chunk.total_layers), float("nan"))
        proj_chunk[:, chunk.layers] = project_all_layers(chunk.acts, ax[chunk.layers])
        parts.append(proj_chunk)
        roles.extend([chunk.role] * chunk.acts.shape[0])
    proj = torch.cat(parts).numpy()
    # the first-token policy (config key capping.cap_first_token) is written into both capping files
    config = calibrate(proj, ax, [tuple(w) for w in windows], percentiles, model=model, cap_first_token=cap_first_token)
    config.metadata = {"n_samples": int(proj.shape[0])}
    config.save(config_out)
    config.save_reference(reference_out)
    rows = [
        {"experiment": e.id, "layer": c.layer, "floor": c.floor, "share_below": float((proj[:, c.layer] < c.floor).mean())}
        for e in config.experiments
        for c in e.caps
    ]
    write_text(table_out, pd.DataFrame(rows).to_csv(index=False))
    # the plot shows the layer of the last window closest to the target layer, with every percentile's floor
    exp0 = min(config.experiments, key=lambda e: min(abs(layer - target_layer) for layer in e.layers))
    layer = min(exp0.layers, key=lambda layer: abs(layer - target_layer))
    floors = {
        f"p{p:g}": c.floor
        for e in config.experiments
        if e.layers == exp0.layers
        for c in e.caps
        if c.layer == layer
        for p in [float(e.id.rsplit("-p", 1)[1])]
    }
    is_default = np.asarray(roles) == DEFAULT_ROLE
    calibration_plot(proj[:, layer], is_default, floors, layer, plot_out, title=f"{model}: capping floors at layer {layer}")
