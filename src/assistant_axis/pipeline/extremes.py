"""Report addition: the roles whose vectors lie furthest toward and away from the Assistant end of the axis.

Reads the persona-space result (``roles`` and their ``axis_projection`` at the target layer), so it
costs no model work; it shows at a glance which characters the axis separates from the Assistant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..storage import atomic_path, write_text

log = logging.getLogger(__name__)

ASSISTANT_ROLE = "assistant"  # one of the 275 roles; where it lands is a sanity check of the axis


def load_role_projections(path: str | Path) -> tuple[pd.DataFrame, int]:
    """``(roles sorted from most to least Assistant-like, target layer)`` from ``persona_space.json``."""
    path = Path(path)
    data = json.loads(path.read_text())
    for key in ("roles", "axis_projection", "target_layer"):
        if key not in data:
            raise ValueError(f"{path}: missing field '{key}' (expected the persona_space stage's output)")
    if len(data["roles"]) != len(data["axis_projection"]):
        raise ValueError(f"{path}: fields roles ({len(data['roles'])}) and axis_projection ({len(data['axis_projection'])}) differ in length")
    table = pd.DataFrame({"role": data["roles"], "projection": data["axis_projection"]})
    table = table.sort_values("projection", ascending=False, kind="stable", ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table, int(data["target_layer"])


def persona_extremes(*, pca: str, n: int, table_out: str, plot_out: str, title: str = "") -> pd.DataFrame:
    """The ``n`` most and ``n`` least Assistant-aligned roles as a CSV and a bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, layer = load_role_projections(pca)
    k = min(n, len(table) // 2) or len(table)
    top = table.head(k).assign(group="most Assistant-like")
    bottom = table.tail(k).assign(group="least Assistant-like")
    extremes = pd.concat([top, bottom]).drop_duplicates("role")
    write_text(table_out, extremes.to_csv(index=False))

    fig, ax = plt.subplots(figsize=(8, 0.28 * len(extremes) + 1.5))
    colors = ["tab:blue" if g == "most Assistant-like" else "tab:red" for g in extremes["group"]]
    ax.barh(range(len(extremes)), extremes["projection"], color=colors)
    ax.set_yticks(range(len(extremes)), [f"{r}  (#{i})" for r, i in zip(extremes["role"], extremes["rank"], strict=True)], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(table["projection"].median(), ls="--", color="grey", lw=0.8, label="median role")
    ax.set_xlabel(f"projection of the role vector on the Assistant axis (layer {layer})")
    where = table.loc[table["role"] == ASSISTANT_ROLE, "rank"]
    note = f"; 'assistant' role ranks {int(where.iloc[0])} of {len(table)}" if len(where) else ""
    ax.set_title(f"{title + ': ' if title else ''}roles at both ends of the axis{note}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    with atomic_path(plot_out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    log.info("persona extremes: %d roles, top %s, bottom %s%s", len(table), top["role"].tolist()[:3], bottom["role"].tolist()[-3:], note)
    return extremes
