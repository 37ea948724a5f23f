"""Throughput of vLLM generation with and without activation capping, and of HF generate for scale.

Why: capping is meant to run during large-scale generation, so its cost must be known. Prompts are
the project's extraction questions, half of them under a role prompt (so the cap has work to do).
The cap is calibrated here the way the project does it: floors at the 75th percentile of the
response-mean projections at each capped layer, measured with vLLM's own activation capture.

    python benchmarks/bench_vllm_capping.py --prompts 64 --tokens 64 --dtype auto

Run it directly: vLLM spawns processes, so everything starts under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from assistant_axis.axis import unit
from assistant_axis.conversation import build_conversation
from assistant_axis.generation import Generated, SamplingSettings, generate_batch
from assistant_axis.models import DEFAULT_MODEL, load_model
from assistant_axis.vllm_backend import VLLMEngine

ROOT = Path(__file__).resolve().parents[1]


def conversations(n: int) -> list[list[dict[str, str]]]:
    """``n`` extraction questions, every other one under the first ghost role prompt."""
    questions = [json.loads(line)["question"] for line in (ROOT / "resources/extraction_questions.jsonl").open()]
    ghost = json.loads((ROOT / "resources/roles/instructions/ghost.json").read_text())["instruction"][0]["pos"]
    return [build_conversation(ghost if i % 2 else None, questions[i % len(questions)]) for i in range(n)]


def rate(label: str, fn, *args) -> tuple[float, list[Generated]]:
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    tokens = sum(g.n_tokens for g in (out[0] if isinstance(out, tuple) else out))
    print(f"{label:<34} {tokens:>6} tokens {seconds:>7.1f} s {tokens / seconds:>8.1f} tok/s", flush=True)
    return tokens / seconds, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16")
    parser.add_argument("--layers", default="10:15", help="half-open window of capped layers")
    parser.add_argument("--hf-batch", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    convs = conversations(args.prompts)
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=args.tokens, seed=0)
    start, stop = (int(x) for x in args.layers.split(":"))
    layers = list(range(start, stop))

    t0 = time.perf_counter()
    gen = VLLMEngine(args.model, dtype=args.dtype)
    print(f"vLLM engine start: {time.perf_counter() - t0:.1f} s ({args.prompts} prompts x {args.tokens} tokens, {args.dtype})")
    gen.generate(convs[:4], SamplingSettings(max_new_tokens=8))  # warm-up

    # Calibrate: a fixed random direction per layer, floor at the 75th percentile of projections.
    torch.manual_seed(0)
    vectors = [unit(torch.randn(gen.llm.llm_engine.model_config.hf_config.hidden_size)) for _ in layers]
    _, (_, capture) = rate("vLLM uncapped + capture", gen.generate_with_activations, convs, layers, settings)
    ok = [i for i, c in enumerate(capture.counts) if c > 0]
    floors = [float(torch.quantile(capture.activations[ok, j] @ v, 0.75)) for j, v in enumerate(vectors)]

    plain, _ = rate("vLLM uncapped", gen.generate, convs, settings)
    gen.set_capping([(layer, v, f) for layer, v, f in zip(layers, vectors, floors, strict=True)])
    capped, _ = rate(f"vLLM capped (layers {args.layers})", gen.generate, convs, settings)
    tel = gen.telemetry()
    both, _ = rate("vLLM capped + capture", gen.generate_with_activations, convs, layers, settings)
    gen.close()
    share = sum(t["capped"] for t in tel.values()) / max(1, sum(t["tokens"] for t in tel.values()))
    print(f"capping acted on {share:.0%} of token positions; capped/uncapped throughput {capped / plain:.2f}, "
          f"capped+capture/uncapped {both / plain:.2f}")

    if not args.skip_hf:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
        hf, _ = rate(f"HF generate (batch {args.hf_batch})", generate_batch, model, tokenizer, convs, settings, args.hf_batch)
        print(f"vLLM uncapped / HF: {plain / hf:.2f}")


if __name__ == "__main__":
    main()
