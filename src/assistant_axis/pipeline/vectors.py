"""Stages 4-5: role vectors, default vector, the axis, persona-space PCA and capping calibration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from ..axis import compute_axis, compute_pca, cosine_similarity_per_layer, load_axis, project_all_layers, save_axis
from ..capping import calibrate
from ..plots import axis_layers_plot, calibration_plot, persona_space_plot
from ..roles import DEFAULT_ROLE
from ..storage import save_safetensors, write_json, write_text
from .activations import read_activations

log = logging.getLogger(__name__)


def build_role_vectors(
    *, activations: Sequence[str], scores: Sequence[str], min_count: int, score: int, model: str,
    vectors_out: str, counts_out: str,
) -> None:
    """Role vector = mean of the role's responses judged ``score``; roles below ``min_count`` are left out."""
    keys, acts = read_activations(activations)
    score_table = pa.concat_tables([pq.read_table(p) for p in scores]).to_pandas()
    score_of = dict(zip(score_table["key"], score_table["score"]))
    frame = keys.to_pandas()
    frame["score"] = [score_of.get(k) for k in frame["key"]]
    tensors: dict[str, torch.Tensor] = {}
    rows = []
    for role, idx in frame.groupby("role", sort=False).groups.items():
        idx = np.asarray(idx)
        if role == DEFAULT_ROLE:
            tensors[DEFAULT_ROLE] = acts[idx].mean(0)
            rows.append({"role": role, "responses": len(idx), "in_role": len(idx), "missing": 0, "kept": True})
            continue
        sub = frame.loc[idx, "score"]
        in_role = idx[(sub == score).to_numpy()]
        kept = len(in_role) >= min_count
        if kept:
            tensors[role] = acts[in_role].mean(0)
        rows.append({"role": role, "responses": len(idx), "in_role": len(in_role), "missing": int(sub.isna().sum()), "kept": kept})
    if DEFAULT_ROLE not in tensors:
        raise ValueError("no default responses: the axis needs the 'default' role in config key 'roles'")
    n_roles = sum(1 for r in rows if r["kept"] and r["role"] != DEFAULT_ROLE)
    if n_roles == 0:
        raise ValueError(
            f"no role reached {min_count} responses scored {score}; lower config key 'role_vectors.min_count' "
            "or generate more responses per role"
        )
    log.info("role vectors: %d roles kept, %d dropped (min_count=%d)", n_roles, len(rows) - 1 - n_roles, min_count)
    save_safetensors(vectors_out, tensors, metadata={"model": model, "score": str(score), "min_count": str(min_count)})
    write_text(counts_out, pd.DataFrame(rows).to_csv(index=False))


def load_vectors(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(default vector, {role: vector})`` from the role-vectors file."""
    data = load_file(path)
    default = data.pop(DEFAULT_ROLE)
    return default, data


def build_axis(*, vectors: str, model: str, axis_out: str, axis_pt_out: str) -> None:
    """``axis = mean(default) - mean(role vectors)``; the default vector is the mean of all default responses."""
    default, roles = load_vectors(vectors)
    axis = compute_axis(torch.stack(list(roles.values())), default.unsqueeze(0))
    save_axis(axis_out, axis, metadata={"model": model, "roles": str(len(roles))})
    save_axis(axis_pt_out, axis)


def persona_space(
    *, vectors: str, axis: str, target_layer: int, n_components: int, output: str, plot: str, layers_plot: str, title: str
) -> dict[str, Any]:
    """PCA of mean-centred role vectors at every layer; details at the target layer."""
    ax = load_axis(axis)
    _, roles = load_vectors(vectors)
    names = list(roles)
    stack = torch.stack([roles[n] for n in names])
    if len(names) < 2:
        raise ValueError("persona-space PCA needs at least two role vectors")
    per_layer = []
    pcas = [compute_pca(stack, layer) for layer in range(stack.shape[1])]
    for layer, pca in enumerate(pcas):
        pc1 = pca.components[0]
        cos = float(cosine_similarity_per_layer(ax[layer : layer + 1], pc1.unsqueeze(0))[0])
        per_layer.append(
            {"layer": layer, "cos_axis_pc1": cos, "abs_cos_axis_pc1": abs(cos), "n_components_70": pca.n_components_for(0.7),
             "axis_norm": float(ax[layer].norm())}
        )
    pca = pcas[target_layer]
    k = min(n_components, pca.transformed.shape[1])
    projections = project_all_layers(stack, ax)[:, target_layer]
    result = {
        "target_layer": target_layer,
        "roles": names,
        "explained_variance_ratio": pca.explained_variance_ratio[:k].tolist(),
        "n_components_70": pca.n_components_for(0.7),
        "coordinates": pca.transformed[:, :k].tolist(),
        "axis_projection": projections.tolist(),
        "per_layer": per_layer,
    }
    write_json(output, result)
    persona_space_plot(result, plot, title=title)
    axis_layers_plot(per_layer, layers_plot, target_layer, title=f"{title}: Assistant axis across layers")
    return result


def calibrate_capping(
    *, activations: Sequence[str], axis: str, windows: list[list[int]], percentiles: list[float], model: str,
    target_layer: int, config_out: str, reference_out: str, table_out: str, plot_out: str,
) -> None:
    """Per-layer floors from every role-play and default response (no judge filter), as in the reference."""
    ax = load_axis(axis)
    keys, acts = read_activations(activations)
    proj = project_all_layers(acts, ax).numpy()
    config = calibrate(proj, ax, [tuple(w) for w in windows], percentiles, model=model)
    config.metadata = {"n_samples": int(proj.shape[0])}
    config.save(config_out)
    config.save_reference(reference_out)
    rows = [
        {"experiment": e.id, "layer": i.layer, "floor": i.threshold, "share_below": float((proj[:, i.layer] < i.threshold).mean())}
        for e in config.experiments
        for i in e.interventions
    ]
    write_text(table_out, pd.DataFrame(rows).to_csv(index=False))
    # the plot shows the layer of the last window closest to the target layer, with every percentile's floor
    exp0 = min(config.experiments, key=lambda e: min(abs(layer - target_layer) for layer in e.layers))
    layer = min(exp0.layers, key=lambda layer: abs(layer - target_layer))
    floors = {
        f"p{p:g}": i.threshold
        for e in config.experiments
        if e.layers == exp0.layers
        for i in e.interventions
        if i.layer == layer
        for p in [float(e.id.rsplit("-p", 1)[1])]
    }
    is_default = np.asarray(keys.column("role").to_pylist()) == DEFAULT_ROLE
    calibration_plot(proj[:, layer], is_default, floors, layer, plot_out, title=f"{model}: capping floors at layer {layer}")
