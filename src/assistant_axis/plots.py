"""Figures a person would rather look at than read, and the one routine that saves them.

Every figure of the project is drawn here and written by :func:`save_figure` (atomically, PNG):
persona space, the axis across layers, the roles at both ends of the axis, capping floors, the
capping Pareto plot, a conversation's trajectory and the drift experiment.
"""

from __future__ import annotations

import math
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
    dashed line is where the no-persona baseline sits. Rows with ``<change>_lo``/``_hi`` get error
    bars; labels are placed so that none overlaps another (:func:`place_labels`).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    harm = np.array([100 * r["harm_change"] for r in rows])
    harm_err = _error_bars(rows, "harm_change", harm)
    xs = (np.array([100 * r["perplexity_change"] for r in rows]), np.array([100 * r["mc_change"] for r in rows]))
    x_errs = (_error_bars(rows, "perplexity_change", xs[0]), _error_bars(rows, "mc_change", xs[1]))
    labels = ("perplexity change vs unsteered (%)", "MC accuracy change vs unsteered (points)")
    for k, (ax, x, label) in enumerate(zip(axes, xs, labels, strict=True)):
        colours = ["tab:green" if r["within_bounds"] else "tab:grey" for r in rows]
        if harm_err is not None or x_errs[k] is not None:
            # bootstrap intervals of each change (paired over the same items; see evaluate_capping.add_intervals)
            ax.errorbar(x, harm, yerr=harm_err, xerr=x_errs[k], fmt="none", ecolor="0.6", elinewidth=0.8, capsize=2, zorder=2)
        ax.scatter(x, harm, c=colours, s=36, edgecolor="k", linewidth=0.4, zorder=3)
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
        place_labels(ax, x, harm, [r["experiment"].removeprefix("layers_") for r in rows])
    axes[0].set_ylabel("harmful share change vs unsteered (points, with bootstrap intervals)" if harm_err is not None
                       else "harmful share change vs unsteered (points)")
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


# ---- helpers shared by the analysis figures ---------------------------------------------------------


def _error_bars(rows: Sequence[dict[str, Any]], name: str, centre: np.ndarray, scale: float = 100.0) -> np.ndarray | None:
    """``(2, n)`` distances from ``centre`` to each row's ``<name>_lo``/``_hi`` (x ``scale``), or None without intervals."""
    lo = np.array([float(r.get(f"{name}_lo", np.nan)) for r in rows]) * scale
    hi = np.array([float(r.get(f"{name}_hi", np.nan)) for r in rows]) * scale
    if not np.isfinite(lo).any():
        return None
    return np.vstack([np.clip(centre - lo, 0, None), np.clip(hi - centre, 0, None)])


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two display-space boxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


# label offsets in points, nearest first: rings of 12 directions (a far slot gets a leader line)
_OFFSETS = [(r * math.cos(a), r * math.sin(a)) for r in (5, 10, 16, 24, 34, 46, 60)
            for a in np.deg2rad([30, -30, 150, -150, 90, -90, 0, 180, 60, -60, 120, -120])]


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 7) -> list[Any]:
    """Annotate points so that no label overlaps another label or a point: each label takes the first
    free slot among :data:`_OFFSETS` (nearest first) inside the figure, or the least crowded one;
    slots beyond the first ring get a leader line.

    Deterministic (points are labelled from left to right), so a figure is the same on every run.
    Returns the text objects (tests check their boxes).
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    px_per_pt = fig.dpi / 72.0
    pad = 3.0
    taken = [Bbox.from_bounds(px - pad, py - pad, 2 * pad, 2 * pad) for px, py in pts if np.all(np.isfinite([px, py]))]
    frame = fig.bbox
    texts = []
    for i in sorted(range(len(labels)), key=lambda j: (pts[j][0], pts[j][1])):
        if not np.all(np.isfinite(pts[i])):
            continue
        probe = ax.text(0, 0, labels[i], fontsize=fontsize)
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width + 2, size.height + 2
        best = None
        for dx, dy in _OFFSETS:
            ha = "center" if abs(dx) < 0.3 * math.hypot(dx, dy) else ("left" if dx > 0 else "right")
            va = "bottom" if dy >= 0 else "top"
            ax_ = pts[i][0] + dx * px_per_pt - {"left": 0, "center": w / 2, "right": w}[ha]
            ay_ = pts[i][1] + dy * px_per_pt - (0 if va == "bottom" else h)
            box = Bbox.from_bounds(ax_, ay_, w, h)
            outside = w * h - _overlap(box, frame)
            cost = sum(_overlap(box, other) for other in taken) + outside
            if best is None or cost < best[0]:
                best = (cost, box, dx, dy, ha, va)
            if cost == 0:
                break
        assert best is not None
        _, box, dx, dy, ha, va = best
        arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.5} if math.hypot(dx, dy) > 12 else None
        text = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                           ha=ha, va=va, alpha=0.9, arrowprops=arrow)
        taken.append(box)
        texts.append(text)
    return texts


# ---- trait vectors and the reading of the axis -------------------------------------------------------


def trait_scores_plot(counts: pd.DataFrame, path: str | os.PathLike[str], positive_min: float, negative_max: float, title: str = "") -> None:
    """Mean judge score of each trait's replies under the pos (blue) and neg (red) instructions, with the thresholds."""
    table = counts.assign(gap=counts["pos_mean_score"] - counts["neg_mean_score"]).sort_values("gap", ascending=True, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 0.2 * len(table) + 1.8))
    y = np.arange(len(table))
    ax.hlines(y, table["neg_mean_score"], table["pos_mean_score"], color="0.75", lw=1)
    ax.plot(table["neg_mean_score"], y, "o", color="tab:red", ms=4, label="neg instruction (avoid the trait)")
    ax.plot(table["pos_mean_score"], y, "o", color="tab:blue", ms=4, label="pos instruction (show the trait)")
    ax.axvline(positive_min, color="tab:blue", ls=":", lw=0.8, label=f"pos kept at >= {positive_min:g}")
    ax.axvline(negative_max, color="tab:red", ls="--", lw=0.8, label=f"neg kept at <= {negative_max:g}")
    names = [t if v else f"{t} (no vector)" for t, v in zip(table["trait"], table["vector"], strict=True)]
    ax.set_yticks(y, names, fontsize=6)
    ax.set_xlim(-3, 103)
    ax.set_xlabel("mean trait score of the replies (0-100)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def axis_traits_plot(table: pd.DataFrame, k: int, path: str | os.PathLike[str], title: str = "") -> None:
    """Bar chart of the ``k`` traits most aligned with each end of the axis (cosine of trait vector and axis)."""
    shown = pd.concat([table.head(k), table.tail(k)]).drop_duplicates("trait")
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1.5))
    colours = ["tab:blue" if v >= 0 else "tab:red" for v in shown["cos_axis"]]
    ax.barh(range(len(shown)), shown["cos_axis"], color=colours)
    ax.set_yticks(range(len(shown)), shown["trait"], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("cosine(trait vector, Assistant axis): > 0 Assistant-ward, < 0 role-play-ward")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def pc_traits_plot(shown: pd.DataFrame, ratios: Sequence[float], path: str | os.PathLike[str], title: str = "") -> None:
    """Heat map: cosine of each shown trait vector with the axis and each of the top principal components."""
    cols = ["cos_axis"] + [c for c in shown.columns if c.startswith("cos_pc")]
    values = shown[cols].to_numpy(dtype=float)
    heads = ["axis"] + [f"PC{j + 1}\n({r:.0%})" for j, r in enumerate(ratios)]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 3, 0.28 * len(shown) + 1.8))
    im = ax.imshow(values, cmap="coolwarm_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), heads, fontsize=8)
    ax.set_yticks(range(len(shown)), shown["trait"], fontsize=8)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="cosine (PCs oriented toward the axis)")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def pc1_ends_plot(ends: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> None:
    """Two panels: the roles (PC1 score) and the traits (cosine with PC1) at each end of PC1."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * max(len(ends) // 2, 4) + 1.8))
    for ax, kind, xlabel in zip(axes, ("role", "trait"), ("role's PC1 score (mean-centred)", "cosine(trait vector, PC1)"), strict=True):
        part = ends[ends["kind"] == kind]
        colours = ["tab:blue" if e.startswith("positive") else "tab:red" for e in part["end"]]
        ax.barh(range(len(part)), part["value"], color=colours)
        ax.set_yticks(range(len(part)), part["name"], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{kind}s: blue = Assistant-ward end, red = the other", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


# ---- across runs ------------------------------------------------------------------------------------


def compare_models_plot(table: pd.DataFrame, runs: Sequence[str], path: str | os.PathLike[str], confidence: float) -> None:
    """Two run-by-run matrices: PC1 score correlation and axis rank correlation of the common roles, with intervals."""
    idx = {r: i for i, r in enumerate(runs)}
    fig, axes = plt.subplots(1, 2, figsize=(5.2 * 2 + 1, 0.9 * len(runs) + 3))
    for ax, (col, name) in zip(axes, (("pc1_r", "PC1 scores (Pearson r)"), ("axis_rho", "axis role order (Spearman rho)")), strict=True):
        mat = np.eye(len(runs))
        lo = np.full((len(runs), len(runs)), np.nan)
        hi = np.full((len(runs), len(runs)), np.nan)
        n = np.zeros((len(runs), len(runs)), dtype=int)
        for row in table.to_dict("records"):
            a, b = idx[row["run_a"]], idx[row["run_b"]]
            for i, j in ((a, b), (b, a)):
                mat[i, j], lo[i, j], hi[i, j], n[i, j] = row[col], row[f"{col}_lo"], row[f"{col}_hi"], row["n_roles"]
        im = ax.imshow(mat, cmap="viridis", vmin=-1, vmax=1)
        for i in range(len(runs)):
            for j in range(len(runs)):
                text = "1" if i == j else (f"{mat[i, j]:.2f}\n[{lo[i, j]:.2f}, {hi[i, j]:.2f}]\n{n[i, j]} roles" if np.isfinite(mat[i, j]) else "n/a")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if mat[i, j] < 0.5 else "k")
        ax.set_xticks(range(len(runs)), runs, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(runs)), runs, fontsize=8)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Persona space across models (paper: PC1 r > 0.92); {100 * confidence:g}% bootstrap intervals over roles", fontsize=10)
    save_figure(fig, path)


def compare_layers_plot(runs: dict[str, tuple[Sequence[dict[str, Any]], int]], path: str | os.PathLike[str]) -> None:
    """Every run's |cos(axis, PC1)| and relative axis norm per layer, against relative depth (target layers marked)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, (per_layer, target)) in enumerate(runs.items()):
        layers = np.array([r["layer"] for r in per_layer], dtype=float)
        depth = (layers + 1) / (max(layers) + 1)
        norm = np.array([r["axis_norm"] for r in per_layer], dtype=float)
        colour = colours[i % len(colours)]
        ax1.plot(depth, [r["abs_cos_axis_pc1"] for r in per_layer], "o-", ms=3, color=colour, label=run)
        ax2.plot(depth, norm / max(norm.max(), 1e-12), "o-", ms=3, color=colour, label=run)
        for ax in (ax1, ax2):
            ax.axvline((target + 1) / (max(layers) + 1), color=colour, ls=":", lw=0.8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("|cos(axis, PC1)|")
    ax2.set_ylabel("axis norm / its largest value")
    for ax in (ax1, ax2):
        ax.set_xlabel("relative depth ((layer + 1) / layers); dotted: target layer")
        ax.legend(fontsize=7)
    fig.suptitle("The Assistant axis across layers and models", fontsize=10)
    save_figure(fig, path)


# ---- drift analysis and stability ---------------------------------------------------------------------


def drift_prediction_plot(predictions: pd.DataFrame, table: pd.DataFrame, path: str | os.PathLike[str], layer: int, title: str = "") -> None:
    """Out-of-fold predicted against actual values, one panel per target, with the R^2 and the paper's."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    info = table.set_index("target")
    for ax, target, label in zip(axes, ("projection", "change"), ("projection of the next reply", "change from the previous reply"), strict=True):
        part = predictions[predictions["target"] == target]
        if len(part):
            for domain, sub in part.groupby("domain", sort=False):
                ax.plot(sub["actual"], sub["predicted"], "o", ms=4, alpha=0.8, label=domain)
            lo = float(min(part["actual"].min(), part["predicted"].min()))
            hi = float(max(part["actual"].max(), part["predicted"].max()))
            ax.plot([lo, hi], [lo, hi], "--", color="0.5", lw=0.8)
            ax.legend(fontsize=7)
        row = info.loc[target] if target in info.index else None
        r2 = "n/a" if row is None or not np.isfinite(row["r2"]) else f"{row['r2']:.2f} [{row['r2_lo']:.2f}, {row['r2_hi']:.2f}]"
        paper = "" if row is None else f", paper {row['paper_r2']}"
        ax.set_title(f"{label}\ncross-validated R^2 {r2}{paper}", fontsize=8)
        ax.set_xlabel(f"actual (layer {layer})")
        ax.set_ylabel("predicted (held-out conversations)")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def domain_drift_plot(domains: pd.DataFrame, path: str | os.PathLike[str], layer: int, confidence: float, title: str = "") -> None:
    """Per domain: mean change of the projection from the first to the last turn, with its interval over conversations."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(domains) + 1.8))
    y = np.arange(len(domains))
    drift = domains["drift"].to_numpy(float)
    err = np.vstack([np.clip(drift - domains["drift_lo"].to_numpy(float), 0, None), np.clip(domains["drift_hi"].to_numpy(float) - drift, 0, None)])
    ax.errorbar(drift, y, xerr=np.where(np.isfinite(err), err, 0), fmt="o", color="tab:blue", ecolor="0.5", capsize=3)
    for yi, (d, n, lo) in enumerate(zip(drift, domains["n_conversations"], domains["drift_lo"], strict=True)):
        note = f"n={n}" + ("" if np.isfinite(lo) else ", no interval")
        ax.annotate(note, (d, yi), xytext=(0, 7), textcoords="offset points", fontsize=7, ha="center")
    ax.set_yticks(y, domains["domain"])
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(f"last turn - first turn, projection on the axis (layer {layer}); {100 * confidence:g}% bootstrap over conversations")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def stability_plot(table: pd.DataFrame, full: int, path: str | os.PathLike[str], layer: int, confidence: float, title: str = "") -> None:
    """Cosine with the full axis and rank correlation of the role order against responses per role (medians and ranges)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    k = table["responses_per_role"].to_numpy(float)
    for ax, col, label in ((ax1, "cos", "cosine with the full run's axis"), (ax2, "rho", "Spearman rho of the role order")):
        ax.fill_between(k, table[f"{col}_lo"], table[f"{col}_hi"], color="tab:blue", alpha=0.2, label=f"{100 * confidence:g}% of draws")
        ax.plot(k, table[f"{col}_median"], "o-", color="tab:blue", label="median")
        ax.axvline(full, color="0.5", ls=":", lw=0.8, label=f"this run: {full} (prompts x questions)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(int(v)) for v in k])
        ax.set_ylim(min(0.0, float(np.nanmin(table[f"{col}_lo"])) if len(table) else 0.0), 1.02)
        ax.set_xlabel(f"responses per role (layer {layer})")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
