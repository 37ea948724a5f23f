"""What per-request capping and activation capture cost inside vLLM (prints figures; not a test).

    .venv/bin/python benchmarks/bench_vllm_capping.py [--prompts 256] [--tokens 64] [--rounds 3]

One engine (hooks on), the same prompts (the project's role prompts and extraction questions, half of
them under a role so the cap has work to do), four ways, alternated round by round in one process:

* ``off``: no intervention defined, so no hook is installed (plain vLLM speed);
* ``capping``: every request capped (the run's capping experiment if a finished run has one, else a
  window of random unit directions with floors at the 75th percentile of their projections);
* ``capping + capture``: the same, plus each request's mean activation at the capped layers;
* ``mixed``: half of the requests capped, half not, in the same engine call (per-request capping).

Sampling is seeded per request, as in the pipeline. Run it directly: vLLM may spawn processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from assistant_axis.axis import unit
from assistant_axis.capping import Cap, CappingExperiment, load_capping_config
from assistant_axis.conversation import build_conversation
from assistant_axis.generation import Generated, SamplingSettings
from assistant_axis.models import DEFAULT_MODEL, default_windows
from assistant_axis.vllm_backend import Batch, VLLMEngine

ROOT = Path(__file__).resolve().parents[1]


def conversations(n: int) -> list[list[dict[str, str]]]:
    """``n`` extraction questions, every other one under a role's first system prompt."""
    questions = [json.loads(line)["question"] for line in (ROOT / "resources/extraction_questions.jsonl").open()]
    roles = sorted((ROOT / "resources/roles/instructions").glob("*.json"))
    out = []
    for i in range(n):
        system = json.loads(roles[i % len(roles)].read_text())["instruction"][0]["pos"] if i % 2 else None
        out.append(build_conversation(system, questions[i % len(questions)]))
    return out


def experiment(engine: VLLMEngine, convs: list, settings: SamplingSettings, run: str | None) -> CappingExperiment:
    """The finished run's first experiment, or random directions on the model's first default window."""
    path = ROOT / "results" / (run or "") / "calibrate" / "capping.safetensors"
    if run and path.exists():
        config = load_capping_config(path)
        return config.get(config.recommended or 0)
    start, stop = default_windows(engine.n_layers)[0]
    layers = list(range(start, stop))
    torch.manual_seed(0)
    vectors = [unit(torch.randn(engine.hidden_size)) for _ in layers]
    _, capture = engine.generate_with_activations(convs, layers, settings, intervention=None)
    ok = [i for i, c in enumerate(capture.counts) if c > 0]
    caps = [Cap(layer, v, float(torch.quantile(capture.activations[ok, j] @ v, 0.75))) for j, (layer, v) in enumerate(zip(layers, vectors))]
    return CappingExperiment(f"layers_{start}:{stop}-random", caps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16 on GPUs and CPUs with native bf16, else float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", default="smollm2-135m", help="take the capping experiment of results/<run>/ if there is one")
    args = parser.parse_args()

    convs = conversations(args.prompts)
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=args.tokens, seed=0)
    t0 = time.perf_counter()
    engine = VLLMEngine(args.model, dtype=args.dtype, kv_cache_gib=2)
    print(f"vLLM engine ready in {time.perf_counter() - t0:.1f} s; {args.prompts} prompts x {args.tokens} tokens, "
          f"{args.dtype}, seeded; load average {os.getloadavg()[0]:.1f} (machine shared with other work)")
    engine.generate(convs[:8], SamplingSettings(max_new_tokens=8))  # warm-up
    exp = experiment(engine, convs, settings, args.run)
    name = exp.id
    layers = exp.layers

    def off() -> list[Generated]:
        engine.reset()  # nothing defined: no hooks at all
        return engine.generate(convs, settings, intervention=None)

    def capped() -> list[Generated]:
        engine.define_experiment(exp)
        return engine.generate(convs, settings, intervention=name)

    def capped_capture() -> list[Generated]:
        engine.define_experiment(exp)
        return engine.generate_with_activations(convs, layers, settings, intervention=name)[0]

    def mixed() -> list[Generated]:
        engine.define_experiment(exp)
        half = len(convs) // 2
        done = dict(engine.generate_batches([Batch(convs[:half], settings, name), Batch(convs[half:], settings, None)]))
        return done[0] + done[1]

    ways: dict[str, Callable[[], list[Generated]]] = {
        "off (no hooks)": off, f"capping ({name})": capped, "capping + capture": capped_capture, "mixed: half capped": mixed,
    }
    rates: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for r in range(args.rounds):
        for way in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            out = ways[way]()
            rates[way].append(sum(g.n_tokens for g in out) / (time.perf_counter() - start))
    engine.define_experiment(exp)
    engine.generate(convs, settings, intervention=name)
    tel = engine.telemetry(name)
    share = sum(t["capped"] for t in tel.values()) / max(1, sum(t["tokens"] for t in tel.values()))
    engine.close()
    base = statistics.median(rates[names[0]])
    print(f"\n{'way':<36} {'tokens/s':>9} {'cost':>7}   (median of {args.rounds} rounds; layers {layers[0]}-{layers[-1]})")
    for way in names:
        rate = statistics.median(rates[way])
        print(f"{way:<36} {rate:>9.1f} {1 - rate / base:>7.1%}")
    print(f"\nthe floor acted on {share:.0%} of the capped token positions")


if __name__ == "__main__":
    main()
