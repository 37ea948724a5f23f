"""The whole pipeline on tiny random Gemma 2, Qwen3 and Llama 3 models, one run per family in one config.

The runs differ the way the paper's do: Gemma 2 (no system role, soft-capping) generates with HF
and stores float32 activations; Qwen3 (thinking off) generates with vLLM, stores bfloat16 and
derives its capping windows from its depth; Llama 3 generates with HF and stores float16 for a
layer subset. Every stage runs on each (generation, extraction, judge, role vectors, axis,
persona space, calibration, capping evaluation, drift), and a stored activation of each run is
checked against a forward pass over exactly the reply's tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pipeline_helpers import snakemake, tiny_config, write_config
from safetensors import safe_open
from tiny_models import TINY_FAMILIES, build_tiny_model

from assistant_axis.axis import load_axis
from assistant_axis.capping import CappingConfig
from assistant_axis.conversation import build_conversation, format_conversation
from assistant_axis.layers import get_layers
from assistant_axis.models import describe_model, load_model
from assistant_axis.pipeline.extract import decode

pytestmark = pytest.mark.slow

FAMILIES = tuple(TINY_FAMILIES)
STORAGE = {"gemma2": "float32", "qwen3": "bfloat16", "llama3": "float16"}
LLAMA_LAYERS = [0, 3, 4, 5]
WINDOWS = {"gemma2": [[2, 4]], "qwen3": [[3, 5], [4, 6]], "llama3": [[3, 5]]}  # qwen3's derived from 6 layers
TARGET = {"gemma2": 2, "qwen3": 3, "llama3": 3}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


def tiny_architectures_config(dirs: dict[str, Path]) -> dict[str, Any]:
    """Three runs, paper-shaped per-model settings, CI-sized work (5 roles + default, 1 prompt x 2 questions, 8 tokens)."""
    cfg = tiny_config(shards=1, threads=1)
    cfg["models"] = {
        "gemma2": {"model": str(dirs["gemma2"]), "backend": "hf", "dtype": "float32", "device": "cpu",
                   "target_layer": 2, "capping": {"windows": WINDOWS["gemma2"]}},
        "qwen3": {"model": str(dirs["qwen3"]), "backend": "vllm", "dtype": "float32", "device": "cpu",
                  "vllm": {"kv_cache_gib": 1, "distributed_executor_backend": "uni"},
                  "extraction": {"storage_dtype": "bfloat16"}},
        "llama3": {"model": str(dirs["llama3"]), "backend": "hf", "dtype": "float32", "device": "cpu",
                   "capping": {"windows": WINDOWS["llama3"]},
                   "extraction": {"storage_dtype": "float16", "layers": LLAMA_LAYERS}},
    }
    cfg["capping"] = {"windows": None, "percentiles": [0.25, 0.5]}
    cfg["drift"] = {"enabled": True, "domains": ["coding", "therapy"], "conversations_per_domain": 1, "turns": 2,
                    "max_new_tokens": 8, "user_max_new_tokens": 8}
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run of the three tiny architectures (all stages), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("tiny_arch_run")
    write_config(workdir, tiny_architectures_config(tiny_dirs))
    proc = snakemake(workdir, timeout=1500, env=OFFLINE)
    (workdir / "snakemake.stderr").write_text(proc.stderr)
    return workdir


def test_every_stage_ran_on_every_architecture(tiny_run: Path) -> None:
    for family in FAMILIES:
        res = tiny_run / "results" / family
        facts = json.loads((res / "model" / "model.json").read_text())
        assert facts["architecture"] == TINY_FAMILIES[family].architecture and facts["total_layers"] == 6
        assert facts["n_parameters"] > 3_000_000 and facts["dims"]["head_dim"] == 32
        axis = load_axis(res / "axis" / "axis.safetensors")
        assert axis.shape == (6, 64)
        responses = pd.read_parquet(res / "generate" / "shard_000.parquet")
        assert len(responses) == 5 * 2 + 2 * 2 and responses["n_tokens"].between(0, 8).all()
        assert pq.read_schema(res / "generate" / "shard_000.parquet").metadata[b"backend"] == (
            b"vllm" if family == "qwen3" else b"hf")
        scores = pd.read_parquet(res / "judge" / "shard_000.parquet")
        assert len(scores) == 10 and scores["score"].dropna().between(0, 3).all()
        pca = json.loads((res / "persona_space" / "persona_space.json").read_text())
        assert pca["target_layer"] == TARGET[family]
        stored = LLAMA_LAYERS if family == "llama3" else list(range(6))
        assert [row["layer"] for row in pca["per_layer"]] == stored
        config = CappingConfig.load(res / "calibrate" / "capping.safetensors")
        assert {e.id for e in config.experiments} == {
            f"layers_{a}:{b}-p{p:g}" for a, b in WINDOWS[family] for p in (0.25, 0.5)}
        assert all(torch.isfinite(torch.tensor(c.floor)) for e in config.experiments for c in e.caps)
        recommended = json.loads((res / "evaluate_capping" / "recommended.json").read_text())
        assert recommended["unsteered"]["experiment"] == "unsteered"
        metrics = pd.read_csv(res / "evaluate_capping" / "metrics.csv")
        assert len(metrics) == len(WINDOWS[family]) + 2  # unsteered, one per window at p0.25, no-persona
        drift = pd.read_csv(res / "drift" / "drift.csv")
        assert len(drift) == 4 and np.isfinite(drift["projection"]).all()
        for plot in ("persona_space/persona_space.png", "calibrate/calibration.png", "evaluate_capping/pareto.png",
                     "drift/drift.png"):
            assert (res / plot).stat().st_size > 5_000, plot
    # the plan was printed once at the start, naming the three runs
    assert (tiny_run / "snakemake.stderr").read_text().count("assistant-axis plan") == 1


def test_storage_dtype_and_layer_subset_on_disk(tiny_run: Path) -> None:
    types = {"float32": pa.float32(), "bfloat16": pa.uint16(), "float16": pa.float16()}
    for family in FAMILIES:
        shard = tiny_run / "results" / family / "extract" / "shard_000.parquet"
        schema = pq.read_schema(shard)
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        stored = LLAMA_LAYERS if family == "llama3" else list(range(6))
        assert meta["dtype"] == STORAGE[family] and json.loads(meta["layers"]) == stored and meta["total_layers"] == "6"
        assert [c for c in schema.names if c.startswith("layer_")] == [f"layer_{x:03d}" for x in stored]
        assert schema.field("layer_000").type == pa.list_(types[STORAGE[family]], 64)
    # a layer subset leaves the other layers' rows zero, and the files say which layers hold values
    res = tiny_run / "results" / "llama3"
    with safe_open(str(res / "role_vectors" / "role_vectors.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["layers"]) == LLAMA_LAYERS
    axis = load_axis(res / "axis" / "axis.safetensors")
    assert torch.count_nonzero(axis[[1, 2]]) == 0 and bool((axis[LLAMA_LAYERS].norm(dim=-1) > 0).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_stored_activation_is_the_mean_over_exactly_the_reply_tokens(tiny_run: Path, tiny_dirs: dict[str, Path], family: str) -> None:
    """Recompute one stored row by hand: the prompt as rendered for generation followed by the reply's
    text, tokenized together (BPE may split the prompt's last whitespace differently once the reply
    follows), and the mean of each block's output over the tokens whose characters are the reply's."""
    res = tiny_run / "results" / family
    responses = pd.read_parquet(res / "generate" / "shard_000.parquet")
    row = responses[responses["response"].str.strip() != ""].iloc[0]
    model, tok = load_model(str(tiny_dirs[family]), dtype="float32", device="cpu")
    prompt_text = format_conversation(tok, build_conversation(row["system_prompt"], row["question"]))
    enc = tok(prompt_text + row["response"], add_special_tokens=False, return_offsets_mapping=True)
    reply = [i for i, (start, _) in enumerate(enc["offset_mapping"]) if start >= len(prompt_text)]
    assert reply == list(range(reply[0], len(enc["input_ids"])))
    assert tok.decode([enc["input_ids"][i] for i in reply]) == row["response"]
    seen: dict[int, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out))
             for i, block in enumerate(get_layers(model))]
    try:
        with torch.no_grad():
            model(torch.tensor([enc["input_ids"]]))
    finally:
        for h in hooks:
            h.remove()
    table = pq.read_table(res / "extract" / "shard_000.parquet")
    index = table.column("key").to_pylist().index(row["key"])
    stored = LLAMA_LAYERS if family == "llama3" else list(range(6))
    tol = {"float32": (1e-5, 1e-5), "bfloat16": (8e-3, 1e-3), "float16": (1e-3, 1e-3)}[STORAGE[family]]
    for layer in stored:
        raw = table.column(f"layer_{layer:03d}")[index].values.to_numpy(zero_copy_only=False)
        got = torch.from_numpy(np.array(decode(raw, STORAGE[family])))
        want = seen[layer][0, reply].mean(0)
        torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1], msg=lambda m, layer=layer: f"{family} layer {layer}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_estimate_from_config_json(tiny_dirs: dict[str, Path], family: str) -> None:
    """The facts' parameter count (from config.json numbers, what the plan sizes memory with) within
    0.1% of the weights actually in the folder (norm layers beyond two per block are not counted)."""
    from safetensors import safe_open as open_weights

    with open_weights(str(tiny_dirs[family] / "model.safetensors"), "pt") as f:
        numel = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    estimate = describe_model(str(tiny_dirs[family])).n_parameters
    assert abs(estimate / numel - 1) < 1e-3, (estimate, numel)


def test_gemma2_loads_with_eager_attention_for_its_soft_capping(tiny_dirs: dict[str, Path]) -> None:
    """SDPA would silently skip Gemma 2's attention-logit soft-capping; the other families keep the default."""
    gemma, _ = load_model(str(tiny_dirs["gemma2"]), dtype="float32", device="cpu")
    qwen, _ = load_model(str(tiny_dirs["qwen3"]), dtype="float32", device="cpu")
    assert gemma.config._attn_implementation == "eager"
    assert qwen.config._attn_implementation != "eager"


def test_sharded_device_loads_with_device_map_and_extracts_the_same(tiny_dirs: dict[str, Path]) -> None:
    """`device: sharded` (chosen for HF stages when a run has gpus > 1) loads through accelerate's
    device_map="auto"; here, with no GPU, every block lands on the CPU and the activations are the
    same as a plain load's (the multi-GPU placement itself needs GPUs to be seen)."""
    from assistant_axis.activations import extract_response_activations

    conv = [build_conversation("You are a pirate.", "Where to?", "The sea, matey.")]
    plain, tok = load_model(str(tiny_dirs["llama3"]), dtype="float32", device="cpu")
    sharded, _ = load_model(str(tiny_dirs["llama3"]), dtype="float32", device="sharded")
    assert {p.device.type for p in sharded.parameters()} == {"cpu"}
    torch.testing.assert_close(extract_response_activations(sharded, tok, conv), extract_response_activations(plain, tok, conv))
