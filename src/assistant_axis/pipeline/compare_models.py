"""Stage ``compare_models``: does persona space look alike across the config's models?

The paper reports that the roles' PC1 scores correlate above 0.92 between models: the leading
direction of persona space is shared. For every pair of runs this stage computes, over the roles
both runs kept:

* ``pc1_r``: Pearson correlation of the roles' PC1 scores, each run's PC1 oriented toward its axis
  (sign of ``cos_axis_pc1`` at its target layer in ``persona_space.json``: scikit-learn's sign is
  arbitrary, so without this a perfect agreement could show as -1);
* ``axis_rho``: Spearman rank correlation of the roles' projections on each run's axis (do the
  axes order the roles alike?);

each with a bootstrap interval over roles (:mod:`assistant_axis.uncertainty`). It also overlays
every run's per-layer |cos(axis, PC1)| and axis norm (relative to its largest) against relative depth.

It reads only ``persona_space.json`` files and writes under ``results/_all/compare_models/``
(:data:`.layout.ALL_RUNS`): one folder for what belongs to no single run. It runs when the config
has at least two runs.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..plots import compare_layers_plot, compare_models_plot
from ..storage import write_text
from ..uncertainty import bootstrap

log = logging.getLogger(__name__)

PAPER_PC1_R = 0.92


def run_roles(path: str | Path) -> dict[str, Any]:
    """One run's persona space: ``{"roles", "pc1" (oriented toward the axis), "projection", "per_layer", "target_layer"}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: missing; run the persona_space stage first") from exc
    for key in ("roles", "coordinates", "axis_projection", "per_layer", "target_layer"):
        if key not in data:
            raise ValueError(f"{path}: missing field '{key}' (written by the persona_space stage; rerun it)")
    target = int(data["target_layer"])
    row = next((r for r in data["per_layer"] if int(r["layer"]) == target), None)
    if row is None:
        raise ValueError(f"{path}: field 'per_layer' has no row for the target layer {target}")
    sign = 1.0 if row["cos_axis_pc1"] >= 0 else -1.0
    return {
        "roles": list(data["roles"]),
        "pc1": sign * np.array([c[0] for c in data["coordinates"]], dtype=float),
        "projection": np.asarray(data["axis_projection"], dtype=float),
        "per_layer": data["per_layer"],
        "target_layer": target,
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def compare_pair(a: dict[str, Any], b: dict[str, Any], n_boot: int, confidence: float, seed: int) -> dict[str, Any]:
    """Correlations of two runs over their common roles (in the first run's order), with intervals."""
    index_b = {r: i for i, r in enumerate(b["roles"])}
    common = [(i, index_b[r]) for i, r in enumerate(a["roles"]) if r in index_b]
    ia = np.array([i for i, _ in common], dtype=int)
    ib = np.array([j for _, j in common], dtype=int)
    pc1 = bootstrap([a["pc1"][ia], b["pc1"][ib]], _pearson, n_boot, confidence, seed)
    axis = bootstrap([a["projection"][ia], b["projection"][ib]], _spearman, n_boot, confidence, seed)
    return {"n_roles": len(common), **pc1.as_dict("pc1_r"), **axis.as_dict("axis_rho")}


def compare_models(
    *, persona_spaces: Sequence[str], runs: Sequence[str], n_bootstrap: int, confidence: float, seed: int,
    table_out: str, plot_out: str, layers_plot: str,
) -> pd.DataFrame:
    """Pairwise correlations of every two runs (long table), the matrix plot and the layer overlay."""
    if len(runs) != len(persona_spaces) or len(runs) < 2:
        raise ValueError("compare_models needs the persona_space.json of at least two runs, one per run name")
    data = {run: run_roles(path) for run, path in zip(runs, persona_spaces, strict=True)}
    rows = []
    for ra, rb in itertools.combinations(runs, 2):
        rows.append({"run_a": ra, "run_b": rb, **compare_pair(data[ra], data[rb], n_bootstrap, confidence, seed)})
    table = pd.DataFrame(rows)
    table["paper_pc1_r"] = PAPER_PC1_R
    write_text(table_out, table.to_csv(index=False, float_format="%.6f"))
    compare_models_plot(table, list(runs), plot_out, confidence)
    compare_layers_plot({run: (d["per_layer"], d["target_layer"]) for run, d in data.items()}, layers_plot)
    for r in rows:
        log.info("compare %s vs %s: %d common roles, PC1 r %.3f [%.3f, %.3f], axis rank rho %.3f", r["run_a"], r["run_b"],
                 r["n_roles"], r["pc1_r"], r["pc1_r_lo"], r["pc1_r_hi"], r["axis_rho"])
    return table
