"""Stage ``role_vectors``: each role's mean activation over its fully in-role responses, and the default vector.

Roles are read one at a time (:func:`~.extract.iter_role_activations`), so memory holds one shard
and one role, not the run. Vectors are float32 ``(total layers, hidden)`` whatever the storage
dtype; when extraction stored a layer subset, the rows of the other layers are zero and the file's
metadata ``layers`` lists the stored ones (:func:`stored_layers_of`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..roles import DEFAULT_ROLE
from ..storage import save_safetensors, write_text
from .extract import iter_role_activations

log = logging.getLogger(__name__)


def build_role_vectors(
    *, activations: Sequence[str], scores: Sequence[str], min_count: int, score: int, model: str,
    vectors_out: str, counts_out: str,
) -> None:
    """Role vector = mean of the role's responses judged ``score``; roles below ``min_count`` are left out."""
    score_table = pa.concat_tables([pq.read_table(p, columns=["key", "score"]) for p in scores]).to_pandas()
    score_of = dict(zip(score_table["key"], score_table["score"]))
    tensors: dict[str, torch.Tensor] = {}
    rows = []
    layers: list[int] = []
    for chunk in iter_role_activations(activations):
        role, layers = chunk.role, chunk.layers

        def full_depth(mean: torch.Tensor, chunk=chunk) -> torch.Tensor:
            if len(chunk.layers) == chunk.total_layers:
                return mean
            out = torch.zeros((chunk.total_layers, mean.shape[-1]), dtype=mean.dtype)
            out[chunk.layers] = mean
            return out

        keys = chunk.keys.column("key").to_pylist()
        if role == DEFAULT_ROLE:
            tensors[DEFAULT_ROLE] = full_depth(chunk.acts.mean(0))
            rows.append({"role": role, "responses": len(keys), "in_role": len(keys), "missing": 0, "kept": True})
            continue
        sub = pd.Series([score_of.get(k) for k in keys], dtype="float64")
        in_role = torch.from_numpy((sub == score).to_numpy()).nonzero().flatten()
        kept = len(in_role) >= min_count
        if kept:
            tensors[role] = full_depth(chunk.acts[in_role].mean(0))
        rows.append({"role": role, "responses": len(keys), "in_role": len(in_role), "missing": int(sub.isna().sum()), "kept": kept})
    if DEFAULT_ROLE not in tensors:
        raise ValueError("no default responses: the axis needs the 'default' role in config key 'roles'")
    n_roles = sum(1 for r in rows if r["kept"] and r["role"] != DEFAULT_ROLE)
    if n_roles == 0:
        raise ValueError(
            f"no role reached {min_count} responses scored {score}; lower config key 'role_vectors.min_count' "
            "or generate more responses per role"
        )
    log.info("role vectors: %d roles kept, %d dropped (min_count=%d)", n_roles, len(rows) - 1 - n_roles, min_count)
    meta = {"model": model, "score": str(score), "min_count": str(min_count), "layers": json.dumps(layers)}
    save_safetensors(vectors_out, tensors, metadata=meta)
    write_text(counts_out, pd.DataFrame(rows).to_csv(index=False))


def stored_layers_of(path: str) -> list[int]:
    """The layers a role-vectors file (or an axis built from one) holds values for; all when unrecorded."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        n_layers = f.get_slice(next(iter(f.keys()))).get_shape()[0]
    return json.loads(meta["layers"]) if "layers" in meta else list(range(n_layers))


def load_vectors(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(default vector, {role: vector})`` from the role-vectors file."""
    data = load_file(path)
    default = data.pop(DEFAULT_ROLE)
    return default, data
