"""The Assistant Axis: computation, projection, per-layer diagnostics, role vectors, files.

``axis[L] = mean(default activations) - mean(role vectors)`` per layer, not normalised: it points
from role-play toward the Assistant, so a higher projection means more Assistant-like.

Every public function here has the reference package's name, signature and meaning (see
``docs``/README "Coming from the reference package"); the file readers also accept this project's
safetensors files and check what they load (shape, finite values) so a bad file fails in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .storage import InputError, check_tensor, load_safetensors, save_safetensors, torch_load_safe, torch_save

EPS = 1e-8
DEFAULT_VECTOR_ROLE = "default"  # the reference marks the default vector by this name (or type "mean")


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
    """``v / (||v|| + 1e-8)`` along the last dimension (the reference's normalisation, epsilon included)."""
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
    """Cosine of two ``(layers, hidden)`` stacks, layer by layer (each side normalised with ``+1e-8``)."""
    return (unit(v1.float()) * unit(v2.float())).sum(dim=-1).numpy()


def axis_norm_per_layer(axis: torch.Tensor) -> np.ndarray:
    return axis.float().norm(dim=-1).numpy()


def aggregate_role_vectors(vectors: Mapping[str, torch.Tensor], exclude_roles: Sequence[str] | None = None) -> torch.Tensor:
    """Mean of the per-role vectors whose names are not in ``exclude_roles`` (e.g. ``["default"]``).

    Raises ``ValueError`` when no vector remains, as the reference does.
    """
    excluded = set(exclude_roles or [])
    kept = [v for name, v in vectors.items() if name not in excluded]
    if not kept:
        raise ValueError("No vectors remaining after exclusions")
    return torch.stack(kept).mean(dim=0)


# ---------------------------------------------------------------- files

def save_axis(axis: torch.Tensor, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
    """Save an axis (reference argument order: axis first, then path).

    ``.pt`` (or any other suffix): the reference layout ``{"axis": axis[, "metadata": metadata]}``,
    written atomically; ``metadata`` must hold plain types so the file loads with ``weights_only=True``.
    ``.safetensors``: this project's format, ``metadata`` stored as strings in the header.
    """
    if not isinstance(axis, torch.Tensor):
        raise TypeError(
            f"save_axis(axis, path, metadata=None): the first argument must be the axis tensor, got "
            f"{type(axis).__name__} (the argument order is the reference's: axis, then path)"
        )
    path = Path(path)
    if path.suffix == ".safetensors":
        save_safetensors(path, {"axis": axis.float()}, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        return
    data: dict[str, Any] = {"axis": axis.detach().cpu()}
    if metadata:
        data["metadata"] = dict(metadata)
    torch_save(path, data)


def load_axis(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load an axis: our ``.safetensors``, the reference ``{"axis": tensor}`` dict or a bare tensor ``.pt``.

    ``.pt`` files are read with ``weights_only=True`` (a pickle with code is refused). The axis
    comes back as float32 ``(layers, hidden)``; anything else (wrong layout or shape, NaN or inf,
    all zeros) is a one-line :class:`~assistant_axis.storage.InputError` naming the file and field.
    """
    path = Path(path)
    fix = "re-save it with save_axis(axis, path) from a finite (layers, hidden) tensor, or rerun the axis stage"
    if path.suffix == ".safetensors":
        data: Any
        data, _ = load_safetensors(path, fix)
        if "axis" not in data:
            raise InputError(path, "field 'axis'", f"is missing (tensors: {', '.join(sorted(data)) or 'none'})", fix)
    else:
        data = torch_load_safe(path, fix)
    if isinstance(data, dict):
        if "axis" not in data:
            raise InputError(path, "field 'axis'", f"is missing: expected a tensor or a dict with an 'axis' tensor (keys: {', '.join(sorted(map(str, data))) or 'none'})", fix)
        data = data["axis"]
    return check_tensor(data, path, "axis", 2, fix, nonzero=True).float()


def check_axis_layer(axis: torch.Tensor, layer: int, source: str | os.PathLike[str]) -> None:
    """Refuse measuring at a layer outside the axis or whose row is all zeros (a layer extraction did not store)."""
    if not -axis.shape[0] <= layer < axis.shape[0]:
        raise InputError(source, "field 'axis'", f"has {axis.shape[0]} layers; layer {layer} is outside it", "pick a layer in range (--layer)")
    if not bool((axis[layer] != 0).any()):
        raise InputError(
            source, f"field 'axis' layer {layer}", "is all zeros (that layer was not stored by extraction)",
            "pick a stored layer with --layer, or store it (config key 'extraction.layers') and rerun",
        )


def save_role_vectors(
    vectors: Mapping[str, torch.Tensor], directory: str | os.PathLike[str], default_roles: Sequence[str] = (DEFAULT_VECTOR_ROLE,)
) -> list[Path]:
    """Write one reference-layout ``<role>.pt`` per role: ``{"vector", "type", "role"}``.

    ``type`` is ``"mean"`` for the default vector (the mean of every default response) and
    ``"pos_3"`` for a role vector (the mean of its fully in-role responses), as the reference's
    ``4_vectors.py`` writes it; its ``5_axis.py`` and notebooks read such a folder.
    """
    directory = Path(directory)
    written = []
    for role, vec in vectors.items():
        out = directory / f"{role}.pt"
        kind = "mean" if role in default_roles else "pos_3"
        torch_save(out, {"vector": vec.detach().float().cpu(), "type": kind, "role": role})
        written.append(out)
    return written


def load_role_vectors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Per-role vectors ``{role: (layers, hidden)}`` from any of the layouts in use.

    * this project's ``role_vectors.safetensors`` (one tensor per role, ``default`` included);
    * a folder of reference ``<role>.pt`` files (``{"vector", "type", "role"}``, or bare tensors);
    * one reference ``<role>.pt`` file.

    ``.pt`` files load with ``weights_only=True``; a role is named by the file's ``role`` field,
    else its file name. Vectors must be finite, 2-D and of one shape.
    """
    path = Path(path)
    fix = "write role vectors with save_role_vectors or the role_vectors stage"
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if not files:
            raise ValueError(f"{path}: no <role>.pt files in this folder; {fix}")
    elif path.suffix == ".safetensors":
        tensors, _ = load_safetensors(path, fix)
        if not tensors:
            raise InputError(path, "", "holds no tensors", fix)
        out = {name: check_tensor(t, path, name, 2, fix) for name, t in tensors.items()}
        return _same_shape(out, str(path))
    else:
        files = [path]
    out = {}
    for file in files:
        data = torch_load_safe(file, fix)
        role = file.stem
        if isinstance(data, dict):
            if "vector" not in data:
                raise InputError(file, "field 'vector'", "is missing (the reference layout is {'vector', 'type', 'role'})", fix)
            role = str(data.get("role", role))
            data = data["vector"]
        out[role] = check_tensor(data, file, "vector", 2, fix).float()
    return _same_shape(out, str(path))


def _same_shape(vectors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    shapes = {tuple(v.shape) for v in vectors.values()}
    if len(shapes) > 1:
        raise InputError(source, "", f"role vectors have different shapes {sorted(shapes)}", "all must be (layers, hidden) of one model")
    return vectors
