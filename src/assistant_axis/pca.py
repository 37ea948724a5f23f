"""PCA of activations with the reference package's interface (persona space, variance explained).

The persona space of the paper is a PCA over role vectors at one layer; this module gives that
analysis the reference's public names and return shapes so notebooks written against it run here:

* :class:`MeanScaler` / :class:`L2MeanScaler` - the two preprocessing options, with a
  ``state_dict`` so the frame a PCA was fitted in can be saved and reapplied to new vectors.
* :func:`compute_pca` - the reference 5-tuple ``(pca_transformed, variance_explained,
  n_components, pca, fitted_scaler)`` built on scikit-learn's ``PCA()`` with every component kept.
* :func:`plot_variance_explained` - a matplotlib figure (the reference draws with plotly, which this
  project does not depend on).

Semantics (checked against the reference implementation, safety-research/assistant-axis
``assistant_axis/pca.py``):

* ``variance_explained`` is the *per-component* ratio (``pca.explained_variance_ratio_``), not the
  cumulative curve; it sums to 1. Take ``np.cumsum`` for "components needed for 70%".
* ``n_components`` is the number of components fitted, ``len(variance_explained)`` =
  ``min(n_samples, n_features)``; it is *not* the count reaching a variance threshold.
* ``scaler=None`` applies no scaler and returns ``fitted_scaler=None``; the data are still centred,
  because scikit-learn's PCA always subtracts the mean it fits (``pca.mean_``). Scores therefore
  equal those obtained with a :class:`MeanScaler`; only ``pca.mean_`` differs (data mean vs ~0).
* With :class:`L2MeanScaler` the rows are centred, scaled to unit norm, and then centred once more by
  PCA itself (unit rows no longer have mean zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "L2MeanScaler",
    "MeanScaler",
    "components_for_threshold",
    "compute_pca",
    "plot_variance_explained",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

THRESHOLDS = (0.70, 0.80, 0.90, 0.95)


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x``; half-precision tensors become float32 (numpy has no bfloat16)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def _feature_mean(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mean over every axis but the last, so ``(n, d)`` and ``(n, L, d)`` both give one ``(d,)`` vector."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not t.is_floating_point() or t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()  # accumulate half precision in float32
        return t.mean(dim=tuple(range(t.ndim - 1))).cpu().numpy()
    x = np.asarray(x)
    return x.mean(axis=tuple(range(x.ndim - 1)))


class _CentringScaler:
    """Shared fit/state logic of the two scalers (kept private so neither is an instance of the other)."""

    def __init__(self, mean: torch.Tensor | np.ndarray | None = None) -> None:
        self.mean: np.ndarray | None = None if mean is None else _to_numpy(mean)

    def fit(self, X: torch.Tensor | np.ndarray) -> _CentringScaler:
        """Learn the per-feature mean of ``X`` unless a mean is already set."""
        if self.mean is None:
            self.mean = _feature_mean(X)
        return self

    def _centre(self, X: ArrayT) -> ArrayT:
        if self.mean is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(X) or pass a mean")
        if isinstance(X, torch.Tensor):
            dtype = X.dtype if X.is_floating_point() else torch.float32
            return X.to(dtype) - torch.as_tensor(self.mean, device=X.device).to(dtype)
        return np.asarray(X) - self.mean

    def transform(self, X: ArrayT) -> ArrayT:
        raise NotImplementedError

    def fit_transform(self, X: ArrayT) -> ArrayT:
        return self.fit(X).transform(X)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mean = state["mean"]
        self.mean = None if mean is None else _to_numpy(mean)

    def __repr__(self) -> str:
        shape = None if self.mean is None else tuple(self.mean.shape)
        return f"{type(self).__name__}(mean shape={shape})"


class MeanScaler(_CentringScaler):
    """Centre data by subtracting a per-feature mean.

    ``fit`` learns the mean only while none is set (reference semantics): a mean passed to the
    constructor or restored with :meth:`load_state_dict` is kept, and so is one learned by an earlier
    ``fit``. That is what lets a saved scaler put new vectors into the frame of an earlier PCA; use
    a fresh scaler to centre a different data set on its own mean.

    ``transform`` returns the same kind it is given: a tensor (on the input's device, in the input's
    floating dtype) for a tensor, a numpy array for anything else. The stored mean is a numpy array,
    as in the reference's ``state_dict``.
    """

    def transform(self, X: ArrayT) -> ArrayT:
        return self._centre(X)


class L2MeanScaler(_CentringScaler):
    """Centre, then divide each row by its L2 norm (floored at ``eps``) so every vector counts equally.

    Role vectors differ in norm; without this step the PCA is dominated by the few roles whose
    activations sit farthest from the mean. ``eps`` (default ``1e-12``) only guards a row that
    equals the mean. Fitting, state and return-type rules are those of :class:`MeanScaler`.
    """

    def __init__(self, mean: torch.Tensor | np.ndarray | None = None, eps: float = 1e-12) -> None:
        super().__init__(mean)
        self.eps = float(eps)

    def transform(self, X: ArrayT) -> ArrayT:
        centred = self._centre(X)
        if isinstance(centred, torch.Tensor):
            norms = torch.linalg.vector_norm(centred, ord=2, dim=-1, keepdim=True)
            return centred / norms.clamp_min(self.eps)
        norms = np.linalg.norm(centred, ord=2, axis=-1, keepdims=True)
        return centred / np.maximum(norms, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "eps": self.eps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.eps = float(state.get("eps", 1e-12))


def _select_layer(activation_list: Any, layer: int | None) -> torch.Tensor | np.ndarray:
    """The ``(n, d)`` matrix at ``layer``; lists of per-sample tensors/arrays are stacked first."""
    x = activation_list
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("compute_pca: activation_list is empty")
        x = torch.stack(list(x)) if all(isinstance(v, torch.Tensor) for v in x) else np.stack([_to_numpy(v) for v in x])
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"compute_pca: expected a tensor, an array or a list of them, got {type(x).__name__}")
    if x.ndim == 3:
        if layer is None:
            raise ValueError("compute_pca: (n, layers, hidden) input needs a layer index")
        return x[:, layer, :]
    if x.ndim == 2:
        return x  # ``layer`` is ignored for 2-D input, as in the reference
    raise ValueError(f"compute_pca: expected 2-D (n, hidden) or 3-D (n, layers, hidden), got shape {tuple(x.shape)}")


def _apply_scaler(scaler: Any, x: torch.Tensor | np.ndarray) -> tuple[Any, Any]:
    """Scale ``x``; accepts anything with fit_transform, fit + transform, or a plain callable."""
    if scaler is None:
        return x, None
    if hasattr(scaler, "fit_transform"):
        return scaler.fit_transform(x), scaler
    if hasattr(scaler, "fit") and hasattr(scaler, "transform"):
        scaler.fit(x)
        return scaler.transform(x), scaler
    if callable(scaler):
        return scaler(x), None  # a stateless function has nothing to hand back
    raise TypeError("scaler must be None, a callable, or have fit_transform or fit/transform")


def components_for_threshold(variance_explained: Any, threshold: float) -> int | None:
    """Smallest number of leading components whose ratios sum to ``threshold`` (None if never reached)."""
    cumulative = np.cumsum(_to_numpy(variance_explained).astype(np.float64))
    reached = np.nonzero(cumulative >= threshold - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else None


def compute_pca(
    activation_list: torch.Tensor | np.ndarray | Sequence[torch.Tensor],
    layer: int | None,
    scaler: Any = None,
    verbose: bool = True,
) -> tuple[np.ndarray, np.ndarray, int, Any, Any]:
    """PCA over activations at one layer, keeping every component (the reference's 5-tuple).

    Args:
        activation_list: ``(n, hidden)`` or ``(n, layers, hidden)`` as a tensor or numpy array, or a
            list of per-sample tensors/arrays of either shape (stacked along a new first axis).
        layer: layer index into a 3-D input (negative counts from the end); ignored for 2-D input.
        scaler: ``None`` (sklearn's own centring only), a :class:`MeanScaler` / :class:`L2MeanScaler`,
            any object with ``fit_transform`` or ``fit``/``transform``, or a plain callable.
        verbose: print the number of components and how many reach 70/80/90/95% of the variance.

    Returns:
        ``(pca_transformed, variance_explained, n_components, pca, fitted_scaler)``:
        the ``(n, n_components)`` scores (numpy), the per-component variance ratio (numpy, sums to 1),
        ``n_components = min(n, hidden)``, the fitted ``sklearn.decomposition.PCA``, and the scaler
        after fitting (``None`` when no scaler or a plain callable was given).

    Half-precision tensors are analysed in float32; float32 input stays float32 in scikit-learn.
    """
    from sklearn.decomposition import PCA  # deferred: sklearn costs ~1 s to import

    x = _select_layer(activation_list, layer)
    if x.shape[0] < 2:
        raise ValueError(f"compute_pca needs at least two samples, got {x.shape[0]}")
    scaled, fitted_scaler = _apply_scaler(scaler, x)
    data = _to_numpy(scaled)
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)
    pca = PCA()
    pca_transformed = pca.fit_transform(data)
    variance_explained = pca.explained_variance_ratio_
    n_components = int(len(variance_explained))
    if verbose:
        cumulative = np.cumsum(variance_explained)
        print(f"PCA: {data.shape[0]} samples x {data.shape[1]} features -> {n_components} components")
        print(f"Cumulative variance, first 5 components: {np.round(cumulative[:5], 4).tolist()}")
        for thr in THRESHOLDS:
            k = components_for_threshold(variance_explained, thr)
            print(f"Components for {thr:.0%} of the variance: {k if k is not None else 'not reached'}")
    return pca_transformed, variance_explained, n_components, pca, fitted_scaler


def _curves(variance_explained_or_dict: Any) -> dict[str, np.ndarray] | np.ndarray:
    """One ratio array, or label -> ratio array when several curves are to be compared."""
    if isinstance(variance_explained_or_dict, Mapping):
        if "variance_explained" in variance_explained_or_dict:  # the reference's result-dict form
            return _to_numpy(variance_explained_or_dict["variance_explained"]).astype(np.float64).ravel()
        if not variance_explained_or_dict:
            raise ValueError("plot_variance_explained: the dict has no curves")
        return {str(k): _to_numpy(v).astype(np.float64).ravel() for k, v in variance_explained_or_dict.items()}
    return _to_numpy(variance_explained_or_dict).astype(np.float64).ravel()


def _threshold_line(ax: Any, threshold: float, text: str) -> None:
    """A dashed horizontal line at ``threshold`` (a fraction) with ``text`` at the right edge."""
    y = threshold * 100
    ax.axhline(y, linestyle="--", linewidth=1, color="gray", alpha=0.5, label=f"_threshold {threshold:.0%}")
    ax.annotate(text, xy=(0.995, y), xycoords=("axes fraction", "data"), ha="right", va="top", fontsize=8, color="gray")


def plot_variance_explained(
    variance_explained_or_dict: Any,
    title: str = "PCA Variance Explained",
    subtitle: str = "",
    show_thresholds: bool = True,
    max_components: int | None = None,
) -> Figure:
    """Variance explained per principal component, in percent, as a matplotlib figure.

    * One ratio array (or a dict with a ``"variance_explained"`` key, the reference's form): bars for
      each component and a line for the cumulative share; each threshold (70/80/90/95%) the shown
      components reach gets a dashed line labelled with the number of components needed.
    * A dict ``label -> ratios``: one cumulative curve per label (bars would overlap), and dashed
      threshold lines at 70/80/90/95%.

    ``max_components`` limits what is drawn; cumulative values are still computed over all
    components. The figure is built on the Agg canvas without pyplot, so nothing global is touched
    and nothing is shown; save it with ``fig.savefig``. Curve lines carry their label; threshold lines
    have labels starting with ``_`` (matplotlib's convention for "not in the legend").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: importing the package stays light
    from matplotlib.figure import Figure

    if max_components is not None and max_components < 1:
        raise ValueError("max_components must be at least 1")
    curves = _curves(variance_explained_or_dict)
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    top = 100.0

    def shown(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if ratios.size == 0:
            raise ValueError("plot_variance_explained: empty variance array")
        cumulative = np.cumsum(ratios)
        k = ratios.size if max_components is None else min(ratios.size, max_components)
        return np.arange(1, k + 1), ratios[:k] * 100, cumulative[:k] * 100

    if isinstance(curves, dict):
        for label, ratios in curves.items():
            x, _, cumulative = shown(ratios)
            ax.plot(x, cumulative, marker="o", markersize=3, label=label)
            top = max(top, float(cumulative.max()))
        if show_thresholds:
            for thr in THRESHOLDS:
                _threshold_line(ax, thr, f"{thr:.0%}")
    else:
        x, individual, cumulative = shown(curves)
        ax.bar(x, individual, alpha=0.6, label="Individual variance")
        ax.plot(x, cumulative, marker="o", markersize=3, color="C1", label="Cumulative variance")
        top = max(top, float(cumulative.max()), float(individual.max()))
        if show_thresholds:
            for thr in THRESHOLDS:
                reached = np.nonzero(cumulative >= thr * 100 - 1e-9)[0]
                if reached.size:  # like the reference, only thresholds the shown components reach
                    _threshold_line(ax, thr, f"{thr:.0%} ({int(reached[0]) + 1} dims)")

    ax.set_ylim(0, np.ceil(top / 5) * 5)
    ax.set_xlabel("Principal component")
    ax.set_ylabel("Variance explained (%)")
    ax.legend(loc="lower right")
    fig.suptitle(title)
    if subtitle:
        ax.set_title(subtitle, fontsize=10, color="dimgray")
    return fig
