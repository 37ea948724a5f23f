"""Figures a person would rather look at than read, and the one routine that saves them.

Every figure of the project is drawn here and written by :func:`save_figure` (atomically, PNG):
persona space, the axis across layers, the roles at both ends of the axis, capping floors, the
capping Pareto plot, a conversation's trajectory and the drift experiment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .storage import atomic_path  # noqa: E402


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as a PNG at ``path`` (temporary name, then rename) and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def persona_space_plot(result: dict[str, Any], path: str | os.PathLike[str], title: str = "", n_labels: int = 8) -> None:
    """Roles on PC1/PC2 coloured by their Assistant-axis projection, and the variance explained."""
    coords = np.asarray(result["coordinates"])
    proj = np.asarray(result["axis_projection"])
    names = result["roles"]
    ratio = np.asarray(result["explained_variance_ratio"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.4, 1]})
    y = coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(coords))
    sc = ax1.scatter(coords[:, 0], y, c=proj, cmap="coolwarm_r", s=22, edgecolor="k", linewidth=0.3)
    fig.colorbar(sc, ax=ax1, label="projection on the Assistant axis")
    order = np.argsort(proj)
    for i in list(order[: n_labels // 2]) + list(order[-n_labels // 2 :]):
        ax1.annotate(names[i], (coords[i, 0], y[i]), fontsize=7, alpha=0.8)
    ax1.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax1.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax1.set_title(f"Role vectors at layer {result['target_layer']}")
    k = np.arange(1, len(ratio) + 1)
    ax2.bar(k, ratio, color="tab:blue", label="per component")
    ax2.plot(k, np.cumsum(ratio), "o-", color="tab:orange", label="cumulative")
    ax2.axhline(0.7, ls="--", color="grey", lw=0.8)
    ax2.set_xlabel("principal component")
    ax2.set_ylabel("variance explained")
    ax2.set_title(f"{result['n_components_70']} components reach 70%")
    ax2.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def axis_layers_plot(per_layer: Sequence[dict[str, Any]], path: str | os.PathLike[str], target_layer: int, title: str = "") -> None:
    layers = [r["layer"] for r in per_layer]
    fig, ax1 = plt.subplots(figsize=(8, 4))
    ax1.plot(layers, [r["axis_norm"] for r in per_layer], "o-", color="tab:blue", label="axis norm")
    ax1.set_xlabel("layer (output of block L)")
    ax1.set_ylabel("axis norm", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(layers, [r["abs_cos_axis_pc1"] for r in per_layer], "s-", color="tab:red", label="|cos(axis, PC1)|")
    ax2.set_ylabel("|cos(axis, PC1)|", color="tab:red")
    ax2.set_ylim(0, 1)
    ax1.axvline(target_layer, ls="--", color="grey", lw=0.8)
    ax1.set_title(title or "Assistant axis across layers")
    save_figure(fig, path)


def calibration_plot(
    projections: np.ndarray, is_default: np.ndarray, floors: dict[str, float], layer: int, path: str | os.PathLike[str], title: str = ""
) -> None:
    """Distribution of role-play vs default projections at one layer, with the calibrated floors."""
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.histogram_bin_edges(projections, bins=40)
    # densities: the default responses are far fewer than the role-play ones
    ax.hist(projections[~is_default], bins=bins, alpha=0.6, density=True, label=f"role-play responses ({(~is_default).sum()})", color="tab:red")
    ax.hist(projections[is_default], bins=bins, alpha=0.6, density=True, label=f"default responses ({is_default.sum()})", color="tab:blue")
    for i, (name, value) in enumerate(sorted(floors.items(), key=lambda kv: kv[1])):
        ax.axvline(value, color="k", ls=["-", "--", ":", "-."][i % 4], lw=1, label=f"floor {name}")
    ax.set_xlabel(f"projection on the Assistant axis at layer {layer}")
    ax.set_ylabel("density")
    ax.set_title(title or "Capping floors")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def capping_pareto_plot(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], no_persona_change: float | None = None,
    bounds: tuple[float, float] | None = None, title: str = "",
) -> None:
    """Harm change against each capability change, one point per capping experiment.

    Left: perplexity change (%), right: MC accuracy change (points); y: change of the harmful share
    (points) against the unsteered model, so good experiments sit low and near x = 0. ``bounds``
    (max perplexity increase, max MC drop) shades the region the recommendation may come from; the
    dashed line is where the no-persona baseline sits.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    harm = np.array([100 * r["harm_change"] for r in rows])
    xs = (np.array([100 * r["perplexity_change"] for r in rows]), np.array([100 * r["mc_change"] for r in rows]))
    labels = ("perplexity change vs unsteered (%)", "MC accuracy change vs unsteered (points)")
    for k, (ax, x, label) in enumerate(zip(axes, xs, labels, strict=True)):
        colours = ["tab:green" if r["within_bounds"] else "tab:grey" for r in rows]
        ax.scatter(x, harm, c=colours, s=36, edgecolor="k", linewidth=0.4, zorder=3)
        for xi, yi, r in zip(x, harm, rows, strict=True):
            ax.annotate(r["experiment"].removeprefix("layers_"), (xi, yi), fontsize=7, alpha=0.8, xytext=(3, 3), textcoords="offset points")
        best = [i for i, r in enumerate(rows) if r["recommended"]]
        if best:
            ax.scatter(x[best], harm[best], marker="*", s=260, facecolor="none", edgecolor="tab:red", linewidth=1.5, zorder=4, label="recommended")
        if bounds is not None:
            if k == 0:
                ax.axvspan(min(x.min(), 0) - 1, 100 * bounds[0], color="tab:green", alpha=0.07, label="capability bound")
            else:
                ax.axvspan(-100 * bounds[1], max(x.max(), 0) + 1, color="tab:green", alpha=0.07, label="capability bound")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.6)
        if no_persona_change is not None:
            ax.axhline(100 * no_persona_change, color="tab:blue", ls="--", lw=1, label="no-persona baseline")
        ax.set_xlabel(label)
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("harmful share change vs unsteered (points)")
    fig.suptitle(title or "Capping: harm against capability")
    save_figure(fig, path)


def persona_extremes_plot(extremes: pd.DataFrame, table: pd.DataFrame, layer: int, path: str | os.PathLike[str], title: str = "") -> None:
    """Bar chart of the roles at both ends of the axis (``extremes``), within all roles (``table``)."""
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(extremes) + 1.5))
    colors = ["tab:blue" if g == "most Assistant-like" else "tab:red" for g in extremes["group"]]
    ax.barh(range(len(extremes)), extremes["projection"], color=colors)
    ax.set_yticks(range(len(extremes)), [f"{r}  (#{i})" for r, i in zip(extremes["role"], extremes["rank"], strict=True)], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(table["projection"].median(), ls="--", color="grey", lw=0.8, label="median role")
    ax.set_xlabel(f"projection of the role vector on the Assistant axis (layer {layer})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def trajectory_plot(
    table: pd.DataFrame, path: str | os.PathLike[str], layer: int, title: str = "", floor: float | None = None
) -> None:
    """Projection per assistant turn; windowed turns are drawn hollow, a capping floor as a dashed line."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(table["turn"], table["projection"], "-", color="tab:blue", lw=1.2)
    full = table[~table["windowed"].astype(bool)]
    win = table[table["windowed"].astype(bool)]
    ax.plot(full["turn"], full["projection"], "o", color="tab:blue", label="whole history")
    if len(win):
        ax.plot(win["turn"], win["projection"], "o", mfc="white", color="tab:blue", label="windowed context")
    if floor is not None:
        ax.axhline(floor, ls="--", color="tab:red", lw=1, label="capping floor")
    ax.set_xlabel("assistant turn")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"projection on the Assistant axis (layer {layer})")
    ax.set_title(title or "Assistant-axis trajectory")
    if len(win) or floor is not None:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def drift_plot(table: pd.DataFrame, path: str | os.PathLike[str], layer: int, title: str = "") -> None:
    """Mean projection per turn for each domain (thick) over its individual conversations (thin)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (domain, sub) in enumerate(table.groupby("domain", sort=False)):
        color = colors[i % len(colors)]
        for _, conv in sub.groupby("conversation_id"):
            ax.plot(conv["turn"], conv["projection"], "-", color=color, alpha=0.25, lw=0.8)
        mean = sub.groupby("turn")["projection"].mean()
        ax.plot(mean.index, mean.values, "o-", color=color, lw=2, label=f"{domain} (n={sub['conversation_id'].nunique()})")
    ax.set_xlabel("assistant turn")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"projection on the Assistant axis (layer {layer})")
    ax.set_title(title or "Persona drift by conversation domain")
    ax.legend(fontsize=8)
    save_figure(fig, path)
