"""Extraction throughput and peak memory on the embedded model (prints figures; not a test).

    .venv/bin/python benchmarks/bench_extraction.py [--n 256] [--tokens 96] [--dtype bfloat16]

Builds ``n`` synthetic conversations whose responses are about ``tokens`` tokens long, then times
``extract_response_activations`` over every layer. Peak memory is the process's maximum resident
set size (``ru_maxrss``) measured before and after, so the model's own footprint is shown apart.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

import torch

from assistant_axis import build_conversation, extract_response_activations, load_model
from assistant_axis.conversation import encode_conversation

WORDS = "the sea wind carried old songs across quiet harbours while lanterns burned low and sailors spoke of home".split()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    before_model = rss_mb()
    model, tok = load_model("embedded:smollm2-135m-instruct", dtype=args.dtype, device="cpu")
    after_model = rss_mb()
    convs = []
    for i in range(args.n):
        length = rng.randint(args.tokens // 2, args.tokens * 3 // 2)
        reply = " ".join(rng.choice(WORDS) for _ in range(length))
        convs.append(build_conversation("You are a sailor.", f"Tell me story number {i}.", reply))
    total = sum(len(encode_conversation(tok, c).input_ids) for c in convs)
    extract_response_activations(model, tok, convs[:4], max_batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    acts = extract_response_activations(model, tok, convs, max_batch_size=args.batch_size, progress=True)
    took = time.perf_counter() - start
    print(f"model: embedded SmolLM2-135M-Instruct, {args.dtype}, {args.threads} threads, batch {args.batch_size}")
    print(f"conversations: {args.n}, tokens (prompt + response): {total}, output {tuple(acts.shape)} float32")
    print(f"extraction: {took:.1f} s, {total / took:,.0f} tokens/s, {args.n / took:.1f} conversations/s (all {acts.shape[1]} layers)")
    print(f"peak RSS: {rss_mb():,.0f} MB (model loaded: {after_model:,.0f} MB, before: {before_model:,.0f} MB)")


if __name__ == "__main__":
    main()
