"""Stage ``persona_space``: PCA of the role vectors, the axis against PC1 per layer, and the roles at both ends of the axis.

The PCA is the reference package's :func:`assistant_axis.pca.compute_pca` (scikit-learn's ``PCA``
after a :class:`~assistant_axis.pca.MeanScaler`), run in float64 so the numbers do not depend on
the solver's precision. Component signs follow scikit-learn (>= 1.5): each principal direction
is flipped so that its largest-magnitude coordinate is positive, which makes PC1's sign, the
coordinates and ``cos_axis_pc1`` deterministic.

The extremes (the ``n`` most and least Assistant-aligned roles) show at a glance which characters
the axis separates from the Assistant; where the ``assistant`` role itself lands is a sanity check.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from ..axis import cosine_similarity_per_layer, load_axis, project_all_layers
from ..pca import MeanScaler, components_for_threshold, compute_pca
from ..plots import axis_layers_plot, persona_extremes_plot, persona_space_plot
from ..storage import write_json, write_text
from .role_vectors import load_vectors, stored_layers_of

log = logging.getLogger(__name__)

ASSISTANT_ROLE = "assistant"  # one of the 275 roles; where it lands is a sanity check of the axis


def persona_space(
    *, vectors: str, axis: str, target_layer: int, n_components: int, n_extremes: int, output: str, plot: str,
    layers_plot: str, extremes_table: str, extremes_plot: str, title: str,
) -> dict[str, Any]:
    """PCA of mean-centred role vectors at every layer (details at the target layer), and the roles at both ends of the axis."""
    ax = load_axis(axis)
    _, roles = load_vectors(vectors)
    names = list(roles)
    stack = torch.stack([roles[n] for n in names])
    if len(names) < 2:
        raise ValueError("persona-space PCA needs at least two role vectors")
    per_layer = []
    # (scores, variance ratios, n, sklearn PCA, scaler) per layer, in float64
    # only the layers extraction stored (all by default): a layer subset leaves the others' rows zero
    pcas = {layer: fit_role_pca(stack, layer) for layer in stored_layers_of(vectors)}
    for layer, (_, ratios, _, pca, _) in pcas.items():
        pc1 = torch.from_numpy(pca.components_[0]).float()
        cos = float(cosine_similarity_per_layer(ax[layer : layer + 1], pc1.unsqueeze(0))[0])
        per_layer.append(
            {"layer": layer, "cos_axis_pc1": cos, "abs_cos_axis_pc1": abs(cos),
             "n_components_70": components_for_threshold(ratios, 0.7), "axis_norm": float(ax[layer].norm())}
        )
    scores, ratios, n_fitted, _, _ = pcas[target_layer]
    k = min(n_components, n_fitted)
    projections = project_all_layers(stack, ax)[:, target_layer]
    result = {
        "target_layer": target_layer,
        "roles": names,
        "explained_variance_ratio": ratios[:k].tolist(),
        "n_components_70": components_for_threshold(ratios, 0.7),
        "coordinates": scores[:, :k].astype("float32").tolist(),
        "axis_projection": projections.tolist(),
        "per_layer": per_layer,
    }
    write_json(output, result)
    persona_space_plot(result, plot, title=title)
    axis_layers_plot(per_layer, layers_plot, target_layer, title=f"{title}: Assistant axis across layers")
    persona_extremes(result, n_extremes, extremes_table, extremes_plot, title=title)
    return result


def fit_role_pca(stack: torch.Tensor, layer: int) -> tuple[Any, ...]:
    """The persona-space PCA of ``(roles, layers, hidden)`` role vectors at one layer: the reference
    5-tuple of :func:`~assistant_axis.pca.compute_pca`, mean-centred, in float64 (shared with ``interpret``)."""
    return compute_pca(stack.double(), layer, scaler=MeanScaler(), verbose=False)


def role_projections(result: dict[str, Any], source: str = "persona space") -> pd.DataFrame:
    """Roles sorted from most to least Assistant-like, with their rank, from a persona-space result."""
    for key in ("roles", "axis_projection", "target_layer"):
        if key not in result:
            raise ValueError(f"{source}: missing field '{key}' (expected the persona_space stage's output)")
    if len(result["roles"]) != len(result["axis_projection"]):
        raise ValueError(
            f"{source}: fields roles ({len(result['roles'])}) and axis_projection ({len(result['axis_projection'])}) differ in length"
        )
    table = pd.DataFrame({"role": result["roles"], "projection": result["axis_projection"]})
    table = table.sort_values("projection", ascending=False, kind="stable", ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def persona_extremes(result: dict[str, Any], n: int, table_out: str, plot_out: str, title: str = "") -> pd.DataFrame:
    """The ``n`` most and ``n`` least Assistant-aligned roles as a CSV and a bar chart."""
    table = role_projections(result)
    layer = int(result["target_layer"])
    k = min(n, len(table) // 2) or len(table)
    top = table.head(k).assign(group="most Assistant-like")
    bottom = table.tail(k).assign(group="least Assistant-like")
    extremes = pd.concat([top, bottom]).drop_duplicates("role")
    write_text(table_out, extremes.to_csv(index=False))
    where = table.loc[table["role"] == ASSISTANT_ROLE, "rank"]
    note = f"; 'assistant' role ranks {int(where.iloc[0])} of {len(table)}" if len(where) else ""
    persona_extremes_plot(extremes, table, layer, plot_out, title=f"{title + ': ' if title else ''}roles at both ends of the axis{note}")
    log.info("persona extremes: %d roles, top %s, bottom %s%s", len(table), top["role"].tolist()[:3], bottom["role"].tolist()[-3:], note)
    return extremes
