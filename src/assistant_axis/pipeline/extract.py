"""Stage ``extract``: mean response activations of every layer, one Parquet row per response.

Layout: the sample columns (``key``, ``role``, ``prompt_index``, ``question_id``) and one
``fixed_size_list<float32>[hidden]`` column per layer (``layer_000`` ...). pandas, pyarrow and
DuckDB read it as is; the schema metadata records model, layers, hidden size, dtype and pooling.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..activations import layer_column, mean_activations_for_spans
from ..conversation import build_conversation, encode_conversation
from ..storage import write_parquet
from .cache import UnitCache, group_units, resume
from .layout import fingerprint
from .model import read_model_json

log = logging.getLogger(__name__)
KEY_COLUMNS = ["key", "role", "prompt_index", "question_id"]
POOLING = "mean over the tokens of the assistant response content (layer L = output of block L)"


def activations_table(meta_rows: pa.Table, acts: torch.Tensor, layers: Sequence[int]) -> pa.Table:
    n, _, hidden = acts.shape
    columns = {c: meta_rows.column(c) for c in KEY_COLUMNS}
    arr = acts.numpy().astype(np.float32)
    for slot, layer in enumerate(layers):
        flat = pa.array(arr[:, slot, :].reshape(-1), type=pa.float32())
        columns[layer_column(layer)] = pa.FixedSizeListArray.from_arrays(flat, hidden)
    return pa.table(columns)


def extract_shard(
    *,
    model_json: str,
    responses: str,
    dtype: str,
    device: str,
    batch_size: int,
    max_batch_tokens: int,
    cache_dir: str,
    output: str,
) -> None:
    """Mean activations at every layer for each response of a shard, resumable per role group."""
    facts = read_model_json(model_json)
    resp = pq.read_table(responses)
    roles = list(dict.fromkeys(resp.column("role").to_pylist()))
    by_role = {r: resp.filter(pa.compute.equal(resp.column("role"), r)) for r in roles}
    groups = group_units(roles, {r: t.num_rows for r, t in by_role.items()}, batch_size * 4)
    fingerprints = {r: fingerprint({"model": facts["spec"], "dtype": dtype, "rows": by_role[r].to_pylist()}) for r in roles}
    loaded: tuple[Any, Any] | None = None

    def compute(group: Sequence[str]) -> dict[str, pa.Table]:
        nonlocal loaded
        if loaded is None:
            from ..models import load_model

            loaded = load_model(facts["path"], dtype=dtype, device=device)
        model, tokenizer = loaded
        rows = pa.concat_tables([by_role[r] for r in group])
        samples = []
        for rec in rows.select(["system_prompt", "question", "response"]).to_pylist():
            enc = encode_conversation(tokenizer, build_conversation(rec["system_prompt"], rec["question"], rec["response"]))
            if not rec["response"].strip():
                # an empty reply has no tokens to average: keep the end-of-turn position instead of dropping the row
                samples.append((enc.input_ids, (len(enc.input_ids) - 1, len(enc.input_ids))))
            else:
                samples.append((enc.input_ids, enc.span_of_last("assistant")))
        acts = mean_activations_for_spans(
            model, samples, None, batch_size, max_batch_tokens, tokenizer.pad_token_id or 0, progress=False
        )
        table = activations_table(rows, acts, list(range(acts.shape[1])))
        out, start = {}, 0
        for role in group:
            out[role] = table.slice(start, by_role[role].num_rows)
            start += by_role[role].num_rows
        return out

    tables = resume(UnitCache(cache_dir), groups, fingerprints, compute, "extract")
    out = pa.concat_tables([tables[r] for r in roles])
    layer_cols = [c for c in out.column_names if c.startswith("layer_")]
    n_layers = len(layer_cols)
    hidden = out.schema.field(layer_cols[0]).type.list_size if layer_cols else 0
    meta = {
        "model": facts["spec"],
        "layers": json.dumps(list(range(n_layers))),
        "hidden_size": str(hidden),
        "dtype": "float32",
        "pooling": POOLING,
    }
    write_parquet(Path(output), out.replace_schema_metadata(meta))


def read_activations(paths: Sequence[str | Path], roles: Sequence[str] | None = None) -> tuple[pa.Table, torch.Tensor]:
    """Read activation shards: the key columns and a float32 ``(n, layers, hidden)`` tensor."""
    tables = [pq.read_table(p) for p in paths]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise ValueError("no activation rows to read")
    if roles is not None:
        table = table.filter(pa.compute.is_in(table.column("role"), pa.array(list(roles))))
    layer_cols = sorted(c for c in table.column_names if c.startswith("layer_"))
    hidden = table.schema.field(layer_cols[0]).type.list_size
    stack = np.stack(
        [table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, hidden) for c in layer_cols],
        axis=1,
    )
    return table.select(KEY_COLUMNS), torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))

