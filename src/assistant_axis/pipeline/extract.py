"""Stage ``extract``: mean response activations per layer, one Parquet row per response.

Layout: the sample columns (``key``, ``role``, ``prompt_index``, ``question_id``) and one
``fixed_size_list<...>[hidden]`` column per stored layer (``layer_000`` ...). The schema metadata
records model, stored layers, total layers, hidden size, storage dtype, encoding and pooling.

Storage dtypes (``extraction.storage_dtype``), chosen for size at paper scale (float32 activations
of every layer of Llama-3.3-70B's 331,200 responses take about 870 GB):

* ``float32`` (default): Parquet FLOAT, exact.
* ``float16``: Parquet's FLOAT16 logical type (pyarrow ``halffloat``; DuckDB and pandas read it as
  is); half the size; a value beyond float16's range (65504) is refused, never stored as inf.
* ``bfloat16``: Parquet has no bfloat16 type, so each value is stored as the ``uint16`` bit pattern
  of the bfloat16 number (the upper half of the float32 bits, rounded to nearest even); half the
  size, float32's range. :func:`decode` turns it back into float32.

Layers (``extraction.layers``, null = all) may be a subset; readers get float32 and the list of
stored layers. Role vectors, the axis and calibration are always computed in float32.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
ENCODINGS = {
    "float32": "float32 values",
    "float16": "float16 values (Parquet FLOAT16)",
    "bfloat16": "uint16 bit patterns of bfloat16 values (upper 16 bits of float32, round to nearest even)",
}
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2}
FLOAT16_MAX = 65504.0


def encode(values: torch.Tensor, storage_dtype: str) -> pa.Array:
    """Flat float32 values -> the Parquet-friendly array of ``storage_dtype`` (see the module docstring)."""
    values = values.detach().float().reshape(-1).cpu()
    if storage_dtype == "float32":
        return pa.array(values.numpy(), type=pa.float32())
    if storage_dtype == "float16":
        peak = float(values.abs().max()) if values.numel() else 0.0
        if peak > FLOAT16_MAX:
            raise ValueError(
                f"activations reach {peak:.4g}, beyond float16's range ({FLOAT16_MAX:g}); "
                "set extraction.storage_dtype to bfloat16 (same size, float32's range) or float32"
            )
        return pa.array(values.to(torch.float16).numpy(), type=pa.float16())
    if storage_dtype == "bfloat16":
        bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return pa.array(bits, type=pa.uint16())
    raise ValueError(f"storage dtype {storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")


def decode(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Stored values (as read from Parquet) -> float32."""
    if storage_dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=False)


def activations_table(meta_rows: pa.Table, acts: torch.Tensor, layers: Sequence[int], storage_dtype: str = "float32") -> pa.Table:
    """Key columns plus one fixed-size-list column per layer; ``acts`` is ``(n, len(layers), hidden)``."""
    n, _, hidden = acts.shape
    columns = {c: meta_rows.column(c) for c in KEY_COLUMNS}
    for slot, layer in enumerate(layers):
        columns[layer_column(layer)] = pa.FixedSizeListArray.from_arrays(encode(acts[:, slot, :], storage_dtype), hidden)
    return pa.table(columns)


def response_samples(tokenizer: Any, records: Sequence[dict[str, Any]]) -> list[tuple[list[int], tuple[int, int]]]:
    """``(token ids, reply span)`` of each ``{system_prompt, question, response}`` record, for pooling.

    An empty reply has no tokens to average: its span is the end-of-turn position, so the row is
    kept rather than dropped (callers that want no such rows filter them out first).
    """
    samples = []
    for rec in records:
        enc = encode_conversation(tokenizer, build_conversation(rec["system_prompt"], rec["question"], rec["response"]))
        if not rec["response"].strip():
            samples.append((enc.input_ids, (len(enc.input_ids) - 1, len(enc.input_ids))))
        else:
            samples.append((enc.input_ids, enc.span_of_last("assistant")))
    return samples


class ReplyActivations:
    """Mean activations of reply records, with the model loaded on first use.

    Shared by the ``extract`` and ``trait_vectors`` stages: both resume from a per-unit cache, and a
    fully cached rerun must not pay for loading the model. ``layers=None`` keeps every layer.
    """

    def __init__(self, facts: dict[str, Any], dtype: str, device: str, layers: Sequence[int] | None,
                 batch_size: int, max_batch_tokens: int) -> None:
        self.facts, self.dtype, self.device, self.layers = facts, dtype, device, layers
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self._loaded: tuple[Any, Any] | None = None

    def __call__(self, records: Sequence[dict[str, Any]]) -> torch.Tensor:
        """``(len(records), layers kept, hidden)`` float32 means over each ``{system_prompt, question, response}``'s reply."""
        if self._loaded is None:
            from ..models import load_model

            self._loaded = load_model(self.facts["path"], dtype=self.dtype, device=self.device)
        model, tokenizer = self._loaded
        return mean_activations_for_spans(model, response_samples(tokenizer, records), self.layers, self.batch_size,
                                          self.max_batch_tokens, tokenizer.pad_token_id or 0, progress=False)


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
    storage_dtype: str = "float32",
    layers: Sequence[int] | None = None,
) -> None:
    """Mean activations at the chosen layers (all by default) for each response of a shard, resumable per role group."""
    facts = read_model_json(model_json)
    total = int(facts["total_layers"])
    layer_list = list(range(total)) if layers is None else sorted(int(x) for x in layers)
    resp = pq.read_table(responses)
    roles = list(dict.fromkeys(resp.column("role").to_pylist()))
    by_role = {r: resp.filter(pc.equal(resp.column("role"), r)) for r in roles}
    groups = group_units(roles, {r: t.num_rows for r, t in by_role.items()}, batch_size * 4)
    # storage choices enter the fingerprint only when they differ from the defaults, so caches of
    # runs made before these settings existed stay valid
    storage = {} if (storage_dtype, layers) == ("float32", None) else {"storage": storage_dtype, "layers": layer_list}
    fingerprints = {
        r: fingerprint({"model": facts["spec"], "dtype": dtype, "rows": by_role[r].to_pylist(), **storage}) for r in roles
    }
    pool = ReplyActivations(facts, dtype, device, None if layers is None else layer_list, batch_size, max_batch_tokens)

    def compute(group: Sequence[str]) -> dict[str, pa.Table]:
        rows = pa.concat_tables([by_role[r] for r in group])
        acts = pool(rows.select(["system_prompt", "question", "response"]).to_pylist())
        table = activations_table(rows, acts, layer_list, storage_dtype)
        out, start = {}, 0
        for role in group:
            out[role] = table.slice(start, by_role[role].num_rows)
            start += by_role[role].num_rows
        return out

    tables = resume(UnitCache(cache_dir), groups, fingerprints, compute, "extract")
    out = pa.concat_tables([tables[r] for r in roles])
    layer_cols = [c for c in out.column_names if c.startswith("layer_")]
    hidden = out.schema.field(layer_cols[0]).type.list_size if layer_cols else 0
    meta = {
        "model": facts["spec"],
        "layers": json.dumps(layer_list),
        "total_layers": str(total),
        "hidden_size": str(hidden),
        "dtype": storage_dtype,
        "encoding": ENCODINGS[storage_dtype],
        "pooling": POOLING,
    }
    write_parquet(Path(output), out.replace_schema_metadata(meta))


@dataclass(frozen=True)
class RoleActivations:
    """All stored activations of one role, decoded to float32.

    ``acts`` is ``(n, len(layers), hidden)``: row ``i`` belongs to ``keys`` row ``i`` and slot ``j``
    to layer ``layers[j]`` of a model with ``total_layers`` layers.
    """

    role: str
    keys: pa.Table
    acts: torch.Tensor
    layers: list[int]
    total_layers: int


def _shard_meta(schema: pa.Schema, path: str | Path) -> tuple[list[int], int, str]:
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    layer_cols = sorted(c for c in schema.names if c.startswith("layer_"))
    if not layer_cols:
        raise ValueError(f"{path}: no layer_NNN columns; not an extract shard (rerun the extract stage)")
    layers = json.loads(meta["layers"]) if "layers" in meta else [int(c.removeprefix("layer_")) for c in layer_cols]
    total = int(meta.get("total_layers", len(layer_cols)))
    storage = meta.get("dtype", "float32")
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"{path}: metadata field 'dtype' is {storage!r}, not one of {', '.join(STORAGE_DTYPES)}")
    return layers, total, storage


def _decode_rows(table: pa.Table, layers: Sequence[int], storage: str) -> torch.Tensor:
    cols = [layer_column(layer) for layer in layers]
    hidden = table.schema.field(cols[0]).type.list_size
    stack = np.stack(
        [decode(table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False), storage).reshape(-1, hidden) for c in cols],
        axis=1,
    )
    return torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))


def iter_role_activations(paths: Sequence[str | Path], roles: Sequence[str] | None = None) -> Iterator[RoleActivations]:
    """Each role's activations in turn, in order of first appearance: memory holds one shard (as
    stored) and one role (as float32), never the whole run (the paper's runs hold hundreds of GB).

    A role spread over several shards (the pipeline never does this) is gathered from all of them.
    """
    wanted = None if roles is None else set(roles)
    role_lists = [pq.read_table(p, columns=["role"]).column("role").to_pylist() for p in paths]
    done: set[str] = set()
    layout = None
    for i, path in enumerate(paths):
        if not role_lists[i] or not (set(role_lists[i]) - done):
            continue
        table = pq.read_table(path)
        meta = _shard_meta(table.schema, path)
        if layout is None:
            layout = meta
        elif meta != layout:
            raise ValueError(f"{path}: stores layers/dtype {meta}, unlike the other shards {layout}; rerun the extract stage")
        layers, total, storage = meta
        for role in dict.fromkeys(role_lists[i]):
            if role in done or (wanted is not None and role not in wanted):
                continue
            done.add(role)
            parts = [table.filter(pc.equal(table.column("role"), role))]
            for j in range(i + 1, len(paths)):
                if role in role_lists[j]:
                    later = pq.read_table(paths[j])
                    parts.append(later.filter(pc.equal(later.column("role"), role)))
            rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            yield RoleActivations(role, rows.select(KEY_COLUMNS), _decode_rows(rows, layers, storage), list(layers), total)


def read_activations(paths: Sequence[str | Path], roles: Sequence[str] | None = None) -> tuple[pa.Table, torch.Tensor]:
    """Every row of the shards at once: the key columns and a float32 ``(n, stored layers, hidden)`` tensor.

    Fine for small runs and tests; the stages use :func:`iter_role_activations`, which never holds
    the whole run in memory.
    """
    chunks = list(iter_role_activations(paths, roles))
    if not chunks:
        raise ValueError("no activation rows to read")
    return pa.concat_tables([c.keys for c in chunks]), torch.cat([c.acts for c in chunks])


def read_layer(paths: Sequence[str | Path], layer: int) -> tuple[pa.Table, torch.Tensor]:
    """Every row of the shards at one layer: the key columns and a float32 ``(n, hidden)`` tensor.

    Reads only that layer's column, so an analysis of the target layer (bootstrap stability) holds
    ``responses x hidden`` floats, not every layer.
    """
    keys, parts = [], []
    for path in paths:
        layers, _, storage = _shard_meta(pq.read_schema(path), path)
        if layer not in layers:
            raise ValueError(f"{path}: layer {layer} is not stored (stored: {layers}); add it to config key 'extraction.layers'")
        table = pq.read_table(path, columns=[*KEY_COLUMNS, layer_column(layer)])
        keys.append(table.select(KEY_COLUMNS))
        parts.append(_decode_rows(table, [layer], storage)[:, 0])
    if not parts:
        raise ValueError("no activation shards to read")
    return pa.concat_tables(keys), torch.cat(parts)
