"""Stage ``interpret``: what the axis and the top principal components mean, read through trait vectors.

At the run's target layer, the cosine of the Assistant Axis and of each of the first
``n_components`` principal components of persona space with every trait vector says which traits
line up with each direction. The paper reads its axis this way: the Assistant end aligns with
traits like measured, analytical and cautious, the role-play end with dramatic, mystical or
whimsical ones.

Conventions (so the tables read the same in every run):

* the PCA is persona space's own (:func:`.persona_space.fit_role_pca`: role vectors, default
  excluded, mean-centred, float64);
* each component is **oriented toward the axis** (its cosine with the axis made >= 0), so for
  PC1 the positive end is the Assistant-like end, as on the axis; scikit-learn's own sign (which
  ``persona_space.json`` keeps) is arbitrary with respect to meaning;
* a role's PC1 score is its mean-centred vector projected on the oriented unit PC1.

Outputs: ``trait_alignment.csv`` (every trait: cosine with the axis and with PC1..PCk, rank on
the axis), ``axis_traits.png`` (the ``n_traits`` most aligned traits at each end of the axis),
``pc_traits.png`` (cosines of those traits with the axis and each PC), ``pc1_ends.csv`` and
``pc1_ends.png`` (the roles and the traits at each end of PC1).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..axis import load_axis
from ..plots import axis_traits_plot, pc1_ends_plot, pc_traits_plot
from ..storage import write_text
from .persona_space import fit_role_pca
from .role_vectors import load_vectors
from .trait_vectors import load_trait_vectors

log = logging.getLogger(__name__)

EPS = 1e-12


def cosines(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``vectors`` with ``direction`` (0 for a zero vector)."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(direction)
    return (vectors @ direction) / np.maximum(norms, EPS)


def oriented_components(role_stack: torch.Tensor, axis_vec: np.ndarray, layer: int, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(components (k, d), explained variance ratios (k,), role scores (roles, k))`` with each
    component's sign chosen so that its cosine with the axis is >= 0."""
    scores, ratios, n_fitted, pca, _ = fit_role_pca(role_stack, layer)
    k = min(n_components, n_fitted)
    comps = np.asarray(pca.components_[:k], dtype=np.float64)
    signs = np.where(comps @ axis_vec >= 0, 1.0, -1.0)
    return comps * signs[:, None], np.asarray(ratios[:k]), np.asarray(scores[:, :k]) * signs[None, :]


def interpret(
    *, trait_vectors: str, axis: str, role_vectors: str, target_layer: int, n_components: int, n_traits: int,
    alignment_out: str, axis_plot: str, pcs_plot: str, ends_out: str, ends_plot: str, title: str = "",
) -> pd.DataFrame:
    """The alignment table, the PC1 ends and their plots (see the module docstring)."""
    traits, meta = load_trait_vectors(trait_vectors)
    ax = load_axis(axis)
    _, roles = load_vectors(role_vectors)
    if len(roles) < 2:
        raise ValueError(f"{role_vectors}: persona-space PCA needs at least two role vectors")
    names = list(traits)
    tmat = torch.stack([traits[n][target_layer] for n in names]).double().numpy()
    if not np.linalg.norm(tmat, axis=1).any():
        raise ValueError(f"{trait_vectors}: every trait vector is zero at layer {target_layer}; is that layer stored (config key 'extraction.layers')?")
    axis_vec = ax[target_layer].double().numpy()
    role_names = list(roles)
    comps, ratios, role_scores = oriented_components(torch.stack([roles[n] for n in role_names]), axis_vec, target_layer, n_components)
    table = pd.DataFrame({"trait": names, "cos_axis": cosines(tmat, axis_vec)})
    for j in range(len(comps)):
        table[f"cos_pc{j + 1}"] = cosines(tmat, comps[j])
    table = table.sort_values("cos_axis", ascending=False, kind="stable", ignore_index=True)
    table.insert(1, "rank_axis", range(1, len(table) + 1))
    write_text(alignment_out, table.to_csv(index=False, float_format="%.6f"))
    k = min(n_traits, max(1, len(table) // 2))
    where = f"layer {target_layer}, {len(names)} traits ({meta.get('judge', 'judge unknown')})"
    head = f"{title + ': ' if title else ''}"
    axis_traits_plot(table, k, axis_plot, title=f"{head}traits most aligned with each end of the Assistant axis ({where})")
    shown = pd.concat([table.head(k), table.tail(k)]).drop_duplicates("trait")
    pc_traits_plot(shown, ratios, pcs_plot, title=f"{head}cosine of trait vectors with the axis and the top PCs ({where})")
    ends = pc1_ends(role_names, role_scores[:, 0], table, k)
    write_text(ends_out, ends.to_csv(index=False, float_format="%.6f"))
    cos_pc1 = float(cosines(comps[:1], axis_vec)[0])
    pc1_ends_plot(ends, ends_plot, title=f"{head}roles and traits at each end of PC1 (layer {target_layer}, {ratios[0]:.0%} of variance, "
                                          f"cos with axis {cos_pc1:.2f})")
    log.info("interpret: Assistant end %s; role-play end %s; PC1 cos(axis) %.3f",
             table["trait"].head(3).tolist(), table["trait"].tail(3).tolist()[::-1], cos_pc1)
    return table


def pc1_ends(role_names: list[str], role_pc1: np.ndarray, table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` roles with the highest and lowest PC1 scores and the ``k`` traits with the highest
    and lowest cosine with PC1 (positive end = Assistant-ward, see the module docstring)."""
    rows: list[dict[str, Any]] = []
    order = np.argsort(-role_pc1, kind="stable")
    kr = min(k, max(1, len(role_names) // 2))
    for end, idx in (("positive (Assistant-ward)", order[:kr]), ("negative", order[::-1][:kr])):
        rows += [{"end": end, "kind": "role", "name": role_names[i], "value": float(role_pc1[i])} for i in idx]
    by_pc1 = table.sort_values("cos_pc1", ascending=False, kind="stable")
    for end, part in (("positive (Assistant-ward)", by_pc1.head(k)), ("negative", by_pc1.iloc[::-1].head(k))):
        rows += [{"end": end, "kind": "trait", "name": n, "value": float(v)} for n, v in zip(part["trait"], part["cos_pc1"], strict=True)]
    return pd.DataFrame(rows)
