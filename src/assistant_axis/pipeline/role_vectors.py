"""Stage ``role_vectors``: each role's mean activation over its fully in-role responses, and the default vector."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from ..roles import DEFAULT_ROLE
from ..storage import save_safetensors, write_text
from .extract import read_activations

log = logging.getLogger(__name__)


def build_role_vectors(
    *, activations: Sequence[str], scores: Sequence[str], min_count: int, score: int, model: str,
    vectors_out: str, counts_out: str,
) -> None:
    """Role vector = mean of the role's responses judged ``score``; roles below ``min_count`` are left out."""
    keys, acts = read_activations(activations)
    score_table = pa.concat_tables([pq.read_table(p) for p in scores]).to_pandas()
    score_of = dict(zip(score_table["key"], score_table["score"]))
    frame = keys.to_pandas()
    frame["score"] = [score_of.get(k) for k in frame["key"]]
    tensors: dict[str, torch.Tensor] = {}
    rows = []
    for role, idx in frame.groupby("role", sort=False).groups.items():
        idx = np.asarray(idx)
        if role == DEFAULT_ROLE:
            tensors[DEFAULT_ROLE] = acts[idx].mean(0)
            rows.append({"role": role, "responses": len(idx), "in_role": len(idx), "missing": 0, "kept": True})
            continue
        sub = frame.loc[idx, "score"]
        in_role = idx[(sub == score).to_numpy()]
        kept = len(in_role) >= min_count
        if kept:
            tensors[role] = acts[in_role].mean(0)
        rows.append({"role": role, "responses": len(idx), "in_role": len(in_role), "missing": int(sub.isna().sum()), "kept": kept})
    if DEFAULT_ROLE not in tensors:
        raise ValueError("no default responses: the axis needs the 'default' role in config key 'roles'")
    n_roles = sum(1 for r in rows if r["kept"] and r["role"] != DEFAULT_ROLE)
    if n_roles == 0:
        raise ValueError(
            f"no role reached {min_count} responses scored {score}; lower config key 'role_vectors.min_count' "
            "or generate more responses per role"
        )
    log.info("role vectors: %d roles kept, %d dropped (min_count=%d)", n_roles, len(rows) - 1 - n_roles, min_count)
    save_safetensors(vectors_out, tensors, metadata={"model": model, "score": str(score), "min_count": str(min_count)})
    write_text(counts_out, pd.DataFrame(rows).to_csv(index=False))


def load_vectors(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(default vector, {role: vector})`` from the role-vectors file."""
    data = load_file(path)
    default = data.pop(DEFAULT_ROLE)
    return default, data
