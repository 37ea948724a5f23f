"""The generate stage's vLLM path against raw vLLM ``LLM.chat`` on the same prompts (prints figures; not a test).

    .venv/bin/python benchmarks/bench_vllm_generation.py [--roles 64] [--tokens 40] [--rounds 3] [--hf]

Prompts are the default run's: each role's first ``--prompts-per-role`` system prompts x the first
``--questions`` extraction questions ({model_name} filled in), plus the default role. Both ways run
on the same engine, alternated round by round in one process:

* ``pipeline``: :class:`assistant_axis.pipeline.generate.Generator` as the ``generate`` stage runs it:
  HF-tokenizer rendering, per-request seeds, role groups of ``--group`` queued at once and collected
  as each finishes, replies decoded;
* ``raw LLM.chat``: vLLM's own chat entry point on the same conversations and sampling settings
  (its own rendering and detokenizing, no seeds);
* ``raw LLM.chat, vLLM's top-p``: the same with vLLM-CPU's own top-p filter (a sort of the whole
  vocabulary per step) instead of :mod:`assistant_axis.vllm_sampling`, which the in-process CPU
  engine installs: what plain vLLM gives on this machine.

``--hf`` adds HF ``generate`` (batches of 128, the old default) for scale. ``--multiprocess`` starts
vLLM with its usual engine and worker processes instead of in this process, to compare start-up and
throughput. Run it directly: vLLM may spawn processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from assistant_axis.generation import SamplingSettings, generate_batch
from assistant_axis.models import DEFAULT_MODEL, describe_model, load_model, resolve_model_path
from assistant_axis.pipeline.cache import group_units
from assistant_axis.pipeline.generate import Generator, role_samples
from assistant_axis.roles import DEFAULT_ROLE, load_questions, load_roles, select_roles

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roles", type=int, default=64, help="roles (plus default)")
    parser.add_argument("--prompts-per-role", type=int, default=2)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--group", type=int, default=128, help="samples per cached role group (config batch_size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-gib", type=float, default=0.25)
    parser.add_argument("--hf", action="store_true", help="also HF generate, batches of 128")
    parser.add_argument("--multiprocess", action="store_true", help="vLLM's engine and worker processes, not in-process")
    args = parser.parse_args()

    names = select_roles(str(ROOT / "resources/roles"), "all")
    chosen = [DEFAULT_ROLE] + [r for r in names if r != DEFAULT_ROLE][: args.roles]
    roles = load_roles(str(ROOT / "resources/roles"), chosen)
    questions = load_questions(str(ROOT / "resources/extraction_questions.jsonl"))[: args.questions]
    short = describe_model(DEFAULT_MODEL).short_name
    samples = {r: role_samples(roles[r], questions, 5 if r == DEFAULT_ROLE else args.prompts_per_role, short) for r in chosen}
    groups = group_units(chosen, {r: len(s) for r, s in samples.items()}, args.group)
    jobs = [([s for r in g for s in samples[r]], SamplingSettings(0.7, 0.9, args.tokens, seed=k)) for k, g in enumerate(groups)]
    flat = [s for job, _ in jobs for s in job]

    t0 = time.perf_counter()
    options = {"kv_cache_gib": args.kv_cache_gib, "in_process": not args.multiprocess}
    gen = Generator("vllm", resolve_model_path(DEFAULT_MODEL), args.dtype, "cpu", options)
    started = time.perf_counter() - t0
    llm = gen.engine.llm
    from vllm import SamplingParams

    from assistant_axis.conversation import build_conversation

    convs = [build_conversation(s["system_prompt"], s["question"]) for s in flat]
    raw_params = SamplingParams(temperature=0.7, top_p=0.9, top_k=0, max_tokens=args.tokens, stop_token_ids=gen.engine.eos_ids)
    print(f"vLLM engine ({'processes' if args.multiprocess else 'in-process'}) ready in {started:.1f} s; {len(flat)} prompts "
          f"({len(chosen)} roles incl. default, groups of {args.group}) x {args.tokens} tokens, {args.dtype}; "
          f"load average {os.getloadavg()[0]:.1f} (machine shared with other work)")
    gen.engine.generate(convs[:8], SamplingSettings(max_new_tokens=8))  # warm-up

    def pipeline() -> int:
        return sum(g.n_tokens for _, replies in gen.generate_groups(jobs, args.group) for g in replies)

    def raw() -> int:
        outs = llm.chat(convs, raw_params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    from vllm.v1.sample.ops import topk_topp_sampler

    from assistant_axis.vllm_sampling import vllm_top_p as vllms_own

    fast_top_p, vllm_top_p = topk_topp_sampler.apply_top_k_top_p, vllms_own()

    def raw_vllm_top_p() -> int:
        topk_topp_sampler.apply_top_k_top_p = vllm_top_p
        try:
            return raw()
        finally:
            topk_topp_sampler.apply_top_k_top_p = fast_top_p

    ways = {"pipeline (generate stage)": pipeline, "raw LLM.chat": raw, "raw LLM.chat, vLLM's top-p": raw_vllm_top_p}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    order = list(ways)
    for r in range(args.rounds):
        for way in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            tokens = ways[way]()
            rates[way].append(tokens / (time.perf_counter() - start))
    gen.engine.close()
    print(f"\n{'way':<28} {'tokens/s':>9}   (median of {args.rounds} rounds)")
    for way in order:
        print(f"{way:<28} {statistics.median(rates[way]):>9.1f}")
    ratio = statistics.median(rates[order[0]]) / statistics.median(rates[order[1]])
    print(f"\npipeline / raw vLLM: {ratio:.2f}")
    if args.hf:
        model, tokenizer = load_model(DEFAULT_MODEL, dtype=args.dtype, device="cpu")
        start = time.perf_counter()
        out = generate_batch(model, tokenizer, convs, SamplingSettings(0.7, 0.9, args.tokens), batch_size=128)
        hf = sum(g.n_tokens for g in out) / (time.perf_counter() - start)
        print(f"HF generate (batches of 128): {hf:.1f} tokens/s; pipeline vLLM / HF: {statistics.median(rates[order[0]]) / hf:.2f}")


if __name__ == "__main__":
    main()
