"""Stage ``stability``: how much would the axis and the role ordering move with other responses?

The axis is built from a few responses per role (8 in the default run, 1,200 in the paper). This
stage redraws those responses and rebuilds the axis at the target layer, so a user sees how many
responses per role the axis needs before it stops moving:

* for each size ``k`` (responses per role; ``stability.sizes``, null = 1, 2, 4, ... and the run's
  full ``prompts_per_role x questions_per_role``), ``n_bootstrap`` draws: every role keeps ``k``
  of its responses without replacement, the default role the same share of its own (rounded, at
  least one); at the full size every role is instead resampled *with* replacement to its own
  count (the bootstrap);
* in each draw a role vector is the mean of the drawn responses judged ``role_vectors.score``
  (roles kept in the full run only; a role with no such response in the draw sits out that draw,
  ``min_count`` is not reapplied to subsamples), the default vector the mean of the drawn default
  responses, and the axis ``default - mean(role vectors)``, as the ``axis`` stage computes it;
* per draw: the cosine of that axis with the full run's axis at the target layer, and the Spearman
  correlation of the roles' projections on it with their projections on the full axis.

The draws are fixed so they can be recomputed: ``rng = numpy.random.default_rng(seed)``; sizes in
increasing order, then draws, then roles in sorted name order (``default`` included), each role's
rows in file order: ``rng.choice(n_role, size=k_role, replace=(k == full))``.

Outputs: ``stability.csv`` (per size: median and the ``confidence`` quantile range of the cosine
and of the rank correlation, roles per draw) and ``stability.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.stats import spearmanr

from ..plots import stability_plot
from ..roles import DEFAULT_ROLE
from ..storage import write_text
from .extract import read_layer

log = logging.getLogger(__name__)


def default_sizes(full: int) -> list[int]:
    """1, 2, 4, ... below ``full``, then ``full`` itself."""
    sizes, k = [], 1
    while k < full:
        sizes.append(k)
        k *= 2
    return sizes + [full]


def _axis(acts: torch.Tensor, groups: dict[str, np.ndarray], inrole: dict[str, np.ndarray]) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``(axis, roles used, role vectors)`` from the rows each role keeps (``groups``) and their in-role flags."""
    default = acts[torch.from_numpy(groups[DEFAULT_ROLE])].mean(0)
    names, vecs = [], []
    for role, rows in groups.items():
        if role == DEFAULT_ROLE:
            continue
        chosen = rows[inrole[role]]
        if len(chosen):
            names.append(role)
            vecs.append(acts[torch.from_numpy(chosen)].mean(0))
    if not vecs:
        return torch.full_like(default, float("nan")), names, torch.empty(0, acts.shape[1], dtype=acts.dtype)
    stack = torch.stack(vecs)
    return default - stack.mean(0), names, stack


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + 1e-12)


def stability(
    *, activations: Sequence[str], scores: Sequence[str], target_layer: int, score: int, min_count: int, n_bootstrap: int,
    sizes: Sequence[int] | None, confidence: float, seed: int, table_out: str, plot_out: str, title: str = "",
) -> pd.DataFrame:
    """The bootstrap table and plot (see the module docstring)."""
    keys, acts = read_layer(activations, target_layer)
    acts = acts.double()
    score_table = pa.concat_tables([pq.read_table(p, columns=["key", "score"]) for p in scores]).to_pandas()
    score_of = dict(zip(score_table["key"], score_table["score"], strict=True))
    roles_col = np.array(keys.column("role").to_pylist())
    key_col = keys.column("key").to_pylist()
    is_in = np.array([score_of.get(k) == score for k in key_col], dtype=bool)
    rows_of = {r: np.flatnonzero(roles_col == r) for r in sorted(set(roles_col.tolist()))}
    if DEFAULT_ROLE not in rows_of:
        raise ValueError("stability: no default responses in the extract shards; the axis needs the 'default' role")
    kept = [r for r in rows_of if r != DEFAULT_ROLE and is_in[rows_of[r]].sum() >= min_count]
    if not kept:
        raise ValueError(f"stability: no role has {min_count} responses scored {score} (config key 'role_vectors.min_count')")
    order = sorted([DEFAULT_ROLE, *kept])
    full_groups = {r: rows_of[r] for r in order}
    inrole_of = {r: is_in[rows_of[r]] for r in order}
    full_axis, full_names, full_vecs = _axis(acts, full_groups, {r: inrole_of[r] for r in order})
    full_proj = dict(zip(full_names, (full_vecs @ _unit(full_axis)).tolist(), strict=True))
    counts = [len(rows_of[r]) for r in kept]
    full = int(np.median(counts))
    n_default = len(rows_of[DEFAULT_ROLE])
    sizes = sorted({int(s) for s in (sizes or default_sizes(full)) if 1 <= int(s) <= full})
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    rows = []
    for k in sizes:
        replace = k == full
        cos, rho, n_roles = [], [], []
        for _ in range(n_bootstrap):
            groups, inrole = {}, {}
            for role in order:
                n_role = len(rows_of[role])
                if replace:
                    k_role = n_role
                elif role == DEFAULT_ROLE:
                    k_role = max(1, min(n_role, round(k * n_default / full)))
                else:
                    k_role = min(k, n_role)
                pick = rng.choice(n_role, size=k_role, replace=replace)
                groups[role] = rows_of[role][pick]
                inrole[role] = inrole_of[role][pick]
            axis_b, names_b, vecs_b = _axis(acts, groups, inrole)
            cos.append(float(_unit(axis_b) @ _unit(full_axis)))
            n_roles.append(len(names_b))
            if len(names_b) >= 3:
                proj_b = (vecs_b @ _unit(axis_b)).numpy()
                ref = np.array([full_proj[n] for n in names_b])
                rho.append(float(spearmanr(proj_b, ref).statistic) if np.std(proj_b) > 0 and np.std(ref) > 0 else np.nan)
            else:
                rho.append(np.nan)
        cos_a, rho_a = np.array(cos), np.array(rho)
        rho_f = rho_a[np.isfinite(rho_a)]
        rows.append({
            "responses_per_role": k, "resampling": "bootstrap (with replacement)" if replace else "subsample (without replacement)",
            "draws": n_bootstrap, "roles_mean": float(np.mean(n_roles)),
            "cos_median": float(np.median(cos_a)), "cos_lo": float(np.quantile(cos_a, lo_q)), "cos_hi": float(np.quantile(cos_a, hi_q)),
            "rho_median": float(np.median(rho_f)) if len(rho_f) else np.nan,
            "rho_lo": float(np.quantile(rho_f, lo_q)) if len(rho_f) else np.nan,
            "rho_hi": float(np.quantile(rho_f, hi_q)) if len(rho_f) else np.nan,
        })
        log.info("stability: %d responses per role: cos(axis, full axis) median %.3f, role-order rho median %.3f",
                 k, rows[-1]["cos_median"], rows[-1]["rho_median"])
    table = pd.DataFrame(rows)
    write_text(table_out, table.to_csv(index=False, float_format="%.6f"))
    stability_plot(table, full, plot_out, target_layer, confidence,
                   title=f"{title + ': ' if title else ''}axis stability against responses per role ({len(kept)} roles)")
    return table
