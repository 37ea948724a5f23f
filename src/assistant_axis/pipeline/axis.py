"""Stage ``axis``: ``axis[L] = mean(default) - mean(role vectors)``, in safetensors and the reference ``axis.pt``."""

from __future__ import annotations

import torch

from ..axis import compute_axis, save_axis
from .role_vectors import load_vectors


def build_axis(*, vectors: str, model: str, target_layer: int, axis_out: str, axis_pt_out: str) -> None:
    """``axis = mean(default) - mean(role vectors)``; the default vector is the mean of all default responses.

    The safetensors metadata records the model and the run's target layer, so tools that take a
    run's axis (``assistant-axis project --run``) measure at the layer the run analysed.
    """
    default, roles = load_vectors(vectors)
    axis = compute_axis(torch.stack(list(roles.values())), default.unsqueeze(0))
    save_axis(axis, axis_out, metadata={"model": model, "roles": str(len(roles)), "target_layer": str(target_layer)})
    save_axis(axis, axis_pt_out)
