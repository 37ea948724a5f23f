"""Extraction against its bound and a naive baseline: throughput and working memory (prints figures; not a test).

    .venv/bin/python benchmarks/bench_extraction.py [--n 256] [--tokens 64] [--rounds 3] [--dtype bfloat16]

Three ways over the *same* length-sorted, token-budgeted batches of role-play conversations, in one
process, alternated round by round so that load from other work on the machine hits all of them:

* ``pipeline``: :func:`assistant_axis.activations.pooled_activations`, what the ``extract`` stage
  runs (every layer, then the target layer alone: its memory must not grow with the layers kept);
* ``bare forward``: the decoder stack alone, nothing kept, no LM head (the bound: extraction can
  only add work to it);
* ``naive``: written here the way the reference extracts: every layer's hidden states of the batch
  materialised (``output_hidden_states``), stacked in float32, then meaned per response. The LM
  head is skipped for it too (``logits_to_keep=1``), so the difference is the materialisation alone.

Working memory is the peak resident memory above the loaded model while a way runs on its own:
the kernel's high-water mark is reset before each (``/proc/self/clear_refs``), and large buffers
are returned to the system when freed (``MALLOC_MMAP_THRESHOLD_``, set by re-executing this script).
The pipeline's output is checked against the naive one. Last, the working memory of both at paper
scale, from the formulas the measurements follow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from assistant_axis.activations import TokenBatch, _StopForward, pooled_activations, span_batches
from assistant_axis.conversation import build_conversation, encode_conversation
from assistant_axis.layers import get_layers
from assistant_axis.models import DEFAULT_MODEL, MODEL_CONFIGS, describe_model, load_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the sea wind carried old songs across quiet harbours while lanterns burned low and sailors "
         "spoke of home and of the long roads behind them").split()
MB = 2**20


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_above(fn: Callable[[], object]) -> float:
    """MB of resident memory ``fn`` needs above what is resident when it starts (kernel high-water mark)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - before) / 1024


def role_play_samples(tokenizer, n: int, tokens: int) -> list[tuple[list[int], tuple[int, int]]]:
    """``n`` conversations: a role's system prompt, an extraction question, a reply of about ``tokens`` tokens."""
    roles = sorted((ROOT / "resources/roles/instructions").glob("*.json"))
    questions = [json.loads(line)["question"] for line in (ROOT / "resources/extraction_questions.jsonl").open()]
    rng = random.Random(0)
    samples = []
    for i in range(n):
        system = json.loads(roles[i % len(roles)].read_text())["instruction"][0]["pos"]
        reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(tokens // 2, tokens * 3 // 2)))
        enc = encode_conversation(tokenizer, build_conversation(system, questions[i % len(questions)], reply))
        samples.append((list(enc.input_ids), enc.span_of_last("assistant")))
    return samples


def bare_forward(model: torch.nn.Module, batches: list[TokenBatch]) -> None:
    """The decoder stack on every batch, stopped after the last block: no LM head, nothing kept."""
    last = get_layers(model)[-1]

    def stop(*_: object) -> None:
        raise _StopForward

    handle = last.register_forward_hook(stop)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()


def naive(model: torch.nn.Module, batches: list[TokenBatch], n_out: int) -> torch.Tensor:
    """Every layer's hidden states materialised per batch, stacked in float32, meaned over each span.

    As in the reference, the last entry is HF's *normed* final state, not block L-1's raw output.
    """
    n_layers = len(get_layers(model))
    out = torch.zeros((n_out, n_layers, model.config.hidden_size))
    with torch.no_grad():
        for batch in batches:
            hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                           output_hidden_states=True, logits_to_keep=1).hidden_states
            stacked = torch.stack(hidden[1:]).float()  # (layers, batch, seq, hidden): layer L = block L's output
            means = torch.einsum("lbsd,bs->bld", stacked, batch.weights[:, 0])
            out[[r for row in batch.rows for r in row]] = means
    return out


def paper_scale(batch_tokens: int) -> list[str]:
    """Working memory of one extraction batch of ``batch_tokens`` tokens at the paper's sizes, bf16 model."""
    lines = []
    for name in ("google/gemma-2-27b-it", "Qwen/Qwen3-32B", "meta-llama/Llama-3.3-70B-Instruct"):
        facts = MODEL_CONFIGS[name]
        layers, hidden = facts["total_layers"], facts["hidden_size"]
        naive_gb = (layers + 1) * batch_tokens * hidden * 2 / 1e9 + layers * batch_tokens * hidden * 4 / 1e9
        ours_gb = batch_tokens * hidden * 4 / 1e9  # one block output in float32 while it is pooled
        lines.append(f"  {name:<36} {layers} layers x {hidden}: naive {naive_gb:6.1f} GB (bf16 states + float32 stack), "
                     f"pipeline {ours_gb:5.2f} GB (one block output in float32), {naive_gb / ours_gb:4.0f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="conversations")
    parser.add_argument("--tokens", type=int, default=64, help="mean reply length in tokens")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true", help="skip the working-memory runs")
    args = parser.parse_args()
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # freed buffers go back to the system: peaks are measurable
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    torch.set_num_threads(args.threads)
    model, tok = load_model(DEFAULT_MODEL, dtype=args.dtype, device="cpu")
    n_layers = len(get_layers(model))
    target = describe_model(DEFAULT_MODEL).target_layer
    samples = role_play_samples(tok, args.n, args.tokens)
    batches = span_batches(samples, args.batch_size, args.max_batch_tokens, tok.pad_token_id or 0)
    tokens = sum(len(ids) for ids, _ in samples)
    padded = sum(b.input_ids.numel() for b in batches)
    ways: dict[str, Callable[[], object]] = {
        "pipeline, all layers": lambda: pooled_activations(model, batches, len(samples)),
        "bare forward (bound)": lambda: bare_forward(model, batches),
        "naive (all states)": lambda: naive(model, batches, len(samples)),
        f"pipeline, layer {target} only": lambda: pooled_activations(model, batches, len(samples), [target]),
    }
    print(f"model: {DEFAULT_MODEL}, {args.dtype}, {n_layers} layers, {args.threads} threads; load average "
          f"{os.getloadavg()[0]:.1f} (machine shared with other work)")
    print(f"inputs: {len(samples)} role-play conversations, {tokens} tokens ({padded} padded) in {len(batches)} "
          f"length-sorted batches (<= {args.batch_size} sequences, <= {args.max_batch_tokens} tokens)")
    ours, ref = ways["pipeline, all layers"](), ways["naive (all states)"]()
    # the naive way's last layer is HF's normed final state: compare the blocks before it
    diff = float(((ours - ref).abs() / (ref.abs() + 1.0))[:, :-1].max())
    print(f"check: pipeline vs naive means of blocks 0-{n_layers - 2}, max relative difference {diff:.1e}")
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order every round
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    memory = {name: (float("nan") if args.no_memory else peak_above(fn)) for name, fn in ways.items()}
    bare = statistics.median(times["bare forward (bound)"])
    naive_mem = memory["naive (all states)"]
    print(f"\n{'way':<28} {'tokens/s':>9} {'vs bare':>8} {'working memory':>15} {'vs naive':>9}   (median of {args.rounds} rounds)")
    for name in names:
        sec = statistics.median(times[name])
        print(f"{name:<28} {tokens / sec:>9,.0f} {bare / sec:>8.2f} {memory[name]:>12.0f} MB {naive_mem / max(memory[name], 1):>8.1f}x")
    ratio = bare / statistics.median(times["pipeline, all layers"])
    print(f"\nextraction (all {n_layers} layers) / bare forward: {ratio:.2f} of the bound; working memory "
          f"{naive_mem / max(memory['pipeline, all layers'], 1):.1f}x less than naive; 1 layer vs all layers: "
          f"{memory[f'pipeline, layer {target} only']:.0f} vs {memory['pipeline, all layers']:.0f} MB")
    biggest = max(b.input_ids.numel() for b in batches)
    print(f"\nworking memory of one batch of {args.max_batch_tokens} tokens at paper scale (this run's largest batch: {biggest}):")
    print("\n".join(paper_scale(args.max_batch_tokens)))


if __name__ == "__main__":
    main()
