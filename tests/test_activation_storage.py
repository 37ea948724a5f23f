"""Activation shards in float32, bfloat16 and float16, layer subsets, reading one role at a time, and
parameter counts from config numbers (what the plan sizes memory with)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from assistant_axis.models import MODEL_CONFIGS, describe_model, estimate_parameters, resolve_model_path
from assistant_axis.pipeline.extract import (
    ENCODINGS,
    KEY_COLUMNS,
    activations_table,
    decode,
    encode,
    iter_role_activations,
    read_activations,
)
from assistant_axis.storage import write_parquet


def _shard(path: Path, roles: list[str], acts: torch.Tensor, layers: list[int], total: int, storage: str) -> None:
    keys = pa.table({
        "key": [f"{r}/p0/q{i}" for i, r in enumerate(roles)], "role": roles,
        "prompt_index": pa.array([0] * len(roles), pa.int32()), "question_id": pa.array(list(range(len(roles))), pa.int32()),
    })
    table = activations_table(keys, acts, layers, storage)
    meta = {"layers": json.dumps(layers), "total_layers": str(total), "dtype": storage, "encoding": ENCODINGS[storage]}
    write_parquet(path, table.replace_schema_metadata(meta))


def test_bfloat16_bits_round_trip_like_torch() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e3
    stored = encode(values, "bfloat16")
    assert stored.type == pa.uint16()
    back = decode(stored.to_numpy(zero_copy_only=False), "bfloat16")
    assert back.dtype == np.float32
    assert torch.equal(torch.from_numpy(back), values.to(torch.bfloat16).float())  # round to nearest even, as torch


def test_float16_refuses_values_beyond_its_range() -> None:
    ok = encode(torch.tensor([1.5, -65504.0]), "float16")
    assert ok.type == pa.float16() and decode(ok.to_numpy(zero_copy_only=False), "float16").tolist() == [1.5, -65504.0]
    with pytest.raises(ValueError, match="beyond float16's range.*bfloat16"):
        encode(torch.tensor([1.0, 70000.0]), "float16")


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "float16"])
def test_roles_come_back_one_at_a_time_in_float32(tmp_path: Path, storage: str) -> None:
    """A layer subset of a 6-layer model; role 'b' spread over both shards (the pipeline never does
    that, the reader still gathers it); rows in shard order."""
    gen = torch.Generator().manual_seed(1)
    layers = [1, 4, 5]
    a1, a2 = torch.randn(3, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    _shard(tmp_path / "s0.parquet", ["a", "a", "b"], a1, layers, 6, storage)
    _shard(tmp_path / "s1.parquet", ["b", "c"], a2, layers, 6, storage)
    chunks = list(iter_role_activations([tmp_path / "s0.parquet", tmp_path / "s1.parquet"]))
    assert [c.role for c in chunks] == ["a", "b", "c"]
    assert all(c.layers == layers and c.total_layers == 6 and c.acts.dtype == torch.float32 for c in chunks)
    tol = {"float32": 0.0, "bfloat16": 8e-3, "float16": 1e-3}[storage]
    torch.testing.assert_close(chunks[0].acts, a1[:2], rtol=tol, atol=tol)
    torch.testing.assert_close(chunks[1].acts, torch.cat([a1[2:], a2[:1]]), rtol=tol, atol=tol)
    assert chunks[1].keys.column("key").to_pylist() == ["b/p0/q2", "b/p0/q0"]
    keys, acts = read_activations([tmp_path / "s0.parquet", tmp_path / "s1.parquet"], roles=["c", "a"])
    assert keys.column_names == KEY_COLUMNS and keys.column("role").to_pylist() == ["a", "a", "c"]
    assert acts.shape == (3, 3, 8)
    assert pq.read_schema(tmp_path / "s0.parquet").names == [*KEY_COLUMNS, "layer_001", "layer_004", "layer_005"]


def test_shards_with_other_layers_are_refused(tmp_path: Path) -> None:
    _shard(tmp_path / "s0.parquet", ["a"], torch.zeros(1, 2, 4), [0, 1], 4, "float32")
    _shard(tmp_path / "s1.parquet", ["b"], torch.zeros(1, 2, 4), [2, 3], 4, "float32")
    with pytest.raises(ValueError, match="s1.parquet: stores layers/dtype"):
        list(iter_role_activations([tmp_path / "s0.parquet", tmp_path / "s1.parquet"]))


def _numel(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def test_parameter_estimate_matches_the_embedded_model_weights() -> None:
    facts = describe_model("embedded:smollm2-135m-instruct")
    weights = Path(resolve_model_path("embedded:smollm2-135m-instruct")) / "model.safetensors"
    assert facts.n_parameters == _numel(weights)  # SmolLM2: no biases, two norms per block: exact


def test_parameter_estimate_of_the_paper_models() -> None:
    """Against the published sizes (27.2 B, 32.8 B, 70.6 B parameters)."""
    published = {"google/gemma-2-27b-it": 27.2e9, "Qwen/Qwen3-32B": 32.8e9, "meta-llama/Llama-3.3-70B-Instruct": 70.6e9}
    for name, size in published.items():
        assert abs(estimate_parameters(MODEL_CONFIGS[name]["dims"]) / size - 1) < 0.005, name
    assert estimate_parameters({"hidden_size": 64}) is None  # incomplete config: unknown, not a guess
