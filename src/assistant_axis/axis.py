"""The Assistant Axis: computation, projection, per-layer diagnostics, role vectors, PCA, files.

``axis[L] = mean(default activations) - mean(role vectors)`` per layer, not normalised: it points
from role-play toward the Assistant, so a higher projection means more Assistant-like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .storage import save_safetensors, torch_load_safe, torch_save

EPS = 1e-8


def compute_axis(role_activations: torch.Tensor, default_activations: torch.Tensor) -> torch.Tensor:
    """``mean(default) - mean(role)`` over the first dimension: ``(n, layers, hidden) -> (layers, hidden)``."""
    if role_activations.shape[1:] != default_activations.shape[1:]:
        raise ValueError(
            f"role activations {tuple(role_activations.shape)} and default activations "
            f"{tuple(default_activations.shape)} differ in layers/hidden size"
        )
    if len(role_activations) == 0 or len(default_activations) == 0:
        raise ValueError("compute_axis needs at least one role vector and one default activation")
    return default_activations.float().mean(0) - role_activations.float().mean(0)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm(dim=-1, keepdim=True) + EPS)


def project(activations: torch.Tensor, axis: torch.Tensor, layer: int, normalize: bool = True) -> float:
    """``<h, axis[layer]> / ||axis[layer]||`` for one sample (``(layers, hidden)`` or ``(hidden,)``)."""
    act = activations[layer] if activations.ndim == 2 else activations
    ax = axis[layer].float()
    if normalize:
        ax = unit(ax)
    return float(act.float() @ ax)


def project_batch(activations: torch.Tensor, axis: torch.Tensor, layer: int, normalize: bool = True) -> torch.Tensor:
    """Projection of ``(batch, layers, hidden)`` activations at one layer: ``(batch,)``."""
    ax = axis[layer].float()
    if normalize:
        ax = unit(ax)
    return activations[:, layer, :].float() @ ax


def project_all_layers(activations: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Projection at every layer: ``(batch, layers, hidden) -> (batch, layers)``."""
    return torch.einsum("bld,ld->bl", activations.float(), unit(axis.float()))


def cosine_similarity_per_layer(v1: torch.Tensor, v2: torch.Tensor) -> np.ndarray:
    """Cosine of two ``(layers, hidden)`` stacks, layer by layer."""
    return torch.nn.functional.cosine_similarity(v1.float(), v2.float(), dim=-1, eps=EPS).numpy()


def axis_norm_per_layer(axis: torch.Tensor) -> np.ndarray:
    return axis.float().norm(dim=-1).numpy()


def aggregate_role_vectors(
    activations: torch.Tensor, scores: Sequence[int | None], min_count: int = 10, score: int = 3
) -> torch.Tensor | None:
    """Mean of the activations whose judge score equals ``score``; ``None`` with fewer than ``min_count``."""
    keep = [i for i, s in enumerate(scores) if s == score]
    if len(keep) < min_count:
        return None
    return activations[keep].float().mean(0)


@dataclass
class PCAResult:
    """PCA of mean-centred vectors at one layer (computed with an SVD, no sklearn needed)."""

    components: torch.Tensor  # (k, hidden) principal directions
    explained_variance_ratio: np.ndarray  # (k,)
    transformed: torch.Tensor  # (n, k) coordinates of the inputs
    mean: torch.Tensor  # (hidden,)

    def n_components_for(self, fraction: float) -> int:
        return int(np.searchsorted(np.cumsum(self.explained_variance_ratio), fraction) + 1)


def compute_pca(vectors: torch.Tensor, layer: int | None = None) -> PCAResult:
    """PCA over ``(n, hidden)`` vectors, or ``(n, layers, hidden)`` at ``layer``."""
    x = vectors.float()
    if x.ndim == 3:
        if layer is None:
            raise ValueError("compute_pca: give a layer for (n, layers, hidden) input")
        x = x[:, layer, :]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"compute_pca needs at least two vectors, got shape {tuple(x.shape)}")
    mean = x.mean(0)
    centred = (x - mean).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = (s**2).numpy()
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    return PCAResult(vh.float(), ratio, (centred @ vh.T).float(), mean)


def save_axis(path: str | os.PathLike[str], axis: torch.Tensor, metadata: Mapping[str, str] | None = None) -> None:
    """Save as safetensors (``.safetensors``) or the reference ``{"axis": tensor}`` ``.pt`` layout."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_safetensors(path, {"axis": axis.float()}, metadata=dict(metadata or {}))
    else:
        torch_save(path, {"axis": axis.float().cpu()})


def load_axis(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load an axis from safetensors or a reference ``.pt`` file (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
    else:
        data = torch_load_safe(path)
    if isinstance(data, torch.Tensor):
        return data.float()
    if isinstance(data, dict) and isinstance(data.get("axis"), torch.Tensor):
        return data["axis"].float()
    raise ValueError(f"{path}: expected a tensor or a dict with an 'axis' tensor")
