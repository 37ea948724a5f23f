"""Throughput the pipeline should reach on H100/H200-class GPUs for the paper's three models (prints the README's
"Scaling" table; an estimate from stated hardware figures, not a measurement).

    .venv/bin/python benchmarks/scaling.py [--config config/paper.yaml] [--array 32]

Token counts come from the plan of ``config/paper.yaml`` (:func:`assistant_axis.pipeline.plan.prepare`:
331,200 responses per model, replies at their 512-token maximum, so hours are upper bounds); model
sizes from :func:`assistant_axis.models.describe_model`. The figures:

* a forward pass costs ``2 x parameters`` FLOP per token; prefill and extraction run at ``MFU`` of
  the GPU's dense bf16 peak (compute-bound: large batches of long sequences);
* a decoding step of vLLM reads every weight once plus the KV cache of the running sequences, and
  computes ``2 x parameters x sequences`` FLOP: its time is the larger of the two (``t`` GPUs of
  tensor parallelism share both); the sequences decoded together are vLLM's 256 or as many as the
  KV cache left after the weights holds at the average context (prompt + half the reply);
* tensor parallelism is the smallest power of two whose memory (90% usable) holds the weights
  and KV for 64 sequences; extraction runs on as few GPUs as hold the weights plus a batch
  (``device_map=auto`` runs them one after another, so their speed is one GPU's).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from assistant_axis.pipeline.plan import prepare

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GPU:
    name: str
    flops: float  # dense bf16 FLOP/s
    bandwidth: float  # HBM bytes/s
    memory: float  # bytes


GPUS = (
    GPU("H100 SXM 80 GB", 989e12, 3.35e12, 80e9),
    GPU("H200 SXM 141 GB", 989e12, 4.8e12, 141e9),
)
MFU = 0.4  # share of the dense peak reached by prefill and extraction (the plan's assumption)
USABLE = 0.9  # share of GPU memory vLLM may use
MAX_SEQS = 256  # vLLM's default max_num_seqs


def estimate(run, gpu: GPU, array: int) -> dict[str, float | str]:
    params = float(run.facts.n_parameters)
    dims = run.facts.dims
    weights = params * 2
    kv_per_token = 2 * dims["num_hidden_layers"] * dims["num_key_value_heads"] * dims["head_dim"] * 2
    responses = run.responses
    prompt = run.prompt_tokens / responses
    context = prompt + run.generated_tokens / responses / 2  # average over a reply's decoding
    tp = next(t for t in (1, 2, 4, 8) if t * gpu.memory * USABLE - weights >= 64 * (prompt + run.generated_tokens / responses) * kv_per_token)
    free = tp * gpu.memory * USABLE - weights
    seqs = max(1, min(MAX_SEQS, int(free / (context * kv_per_token))))
    step = max((weights + seqs * context * kv_per_token) / (tp * gpu.bandwidth), 2 * params * seqs / (tp * gpu.flops * MFU))
    decode = seqs / step  # tokens/s of one engine (tp GPUs)
    forward = gpu.flops * MFU / (2 * params)  # tokens/s of one GPU, prefill and extraction
    gen_h = (run.prompt_tokens / (forward * tp) + run.generated_tokens / decode) / 3600  # one engine
    hf_gpus = max(1, math.ceil(weights * 1.15 / (gpu.memory * USABLE)))  # weights + activations of a batch
    ext_h = run.forward_tokens / forward / 3600  # one HF job, its GPUs in turn
    gpu_hours = gen_h * tp + ext_h * hf_gpus
    return {
        "tp": tp, "seqs": seqs, "decode": decode, "decode_per_gpu": decode / tp, "forward": forward,
        "gen_h": gen_h, "ext_h": ext_h, "hf_gpus": hf_gpus, "gpu_hours": gpu_hours,
        "wall_array": (gen_h + ext_h) / array, "array_gpus": array * tp,
        "disk_bf16": responses * run.facts.total_layers * run.facts.hidden_size * 2 / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config/paper.yaml"))
    parser.add_argument("--array", type=int, default=32, help="SLURM array size (the config's shards)")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    plan = prepare(config, ROOT / "config/config.schema.yaml", ROOT, [os.path.relpath(args.config, ROOT)]).plan
    print(f"Paper scale per model ({args.config}): responses, prompt / generated (at most) / extraction tokens:")
    for run in plan.runs.values():
        print(f"  {run.model}: {run.responses:,} responses, {run.prompt_tokens / 1e6:.1f} M / "
              f"{run.generated_tokens / 1e6:.1f} M / {run.forward_tokens / 1e6:.1f} M tokens")
    print(f"\n| model | GPU | generation: vLLM TP, sequences, tokens/s per engine (per GPU) | extraction tokens/s per GPU | "
          f"one engine + one HF job: generation h, extraction h, GPU-hours | {args.array}-job SLURM array: wall h | "
          f"activations (bf16, all layers) |")
    print("|---|---|---|---|---|---|---|")
    for run in plan.runs.values():
        for gpu in GPUS:
            e = estimate(run, gpu, args.array)
            print(f"| {run.model.split('/')[-1]} | {gpu.name} | TP {e['tp']}, {e['seqs']}, {e['decode']:,.0f} ({e['decode_per_gpu']:,.0f}) | "
                  f"{e['forward']:,.0f}{' (over ' + str(e['hf_gpus']) + ' GPUs in turn)' if e['hf_gpus'] > 1 else ''} | "
                  f"{e['gen_h']:.1f}, {e['ext_h']:.1f}, {e['gpu_hours']:.0f} | {e['wall_array']:.1f} | {e['disk_bf16']:,.0f} GB |")
    print(f"\nfigures: {', '.join(f'{g.name}: {g.flops / 1e12:g} TFLOP/s bf16 dense, {g.bandwidth / 1e12:g} TB/s' for g in GPUS)}; "
          f"MFU {MFU:.0%} for prefill and extraction; {USABLE:.0%} of GPU memory usable; at most {MAX_SEQS} sequences decoded together")


if __name__ == "__main__":
    main()
