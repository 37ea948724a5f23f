"""Pooled activations of token spans, accumulated inside forward hooks: the one routine for it.

Extraction (mean over each response), monitoring (mean over each assistant turn of a
conversation) and the vLLM worker's capture (sums over response tokens, step by step) all reduce
a block's output with :func:`pool_tokens`: a batched product of per-span token weights with the
hidden states. Each hook reduces its block right away, so memory holds ``outputs x layers x
hidden`` floats, never ``layers x batch x seq x hidden``; the pass stops after the deepest
requested block (the LM head never runs).

Layer convention (see :mod:`assistant_axis.layers`): layer L is the output of block L.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import length_batches, pad_sequences
from .conversation import Message, encode_conversation
from .layers import check_layer_indices, get_layers

log = logging.getLogger(__name__)

Span = tuple[int, int]


def layer_column(layer: int) -> str:
    """Column name of a layer in activation tables (``layer_015``)."""
    return f"layer_{layer:03d}"


def span_weights(spans: Sequence[Sequence[Span] | None], length: int, normalize: bool = True) -> torch.Tensor:
    """``(n, length)`` float32 weights: row i spreads over the tokens of ``spans[i]`` (a list of ranges).

    ``normalize``: weights ``1/count`` (means) instead of 1 (sums). An empty or ``None`` entry gives
    a zero row.
    """
    weights = torch.zeros((len(spans), length), dtype=torch.float32)
    for row, ranges in enumerate(spans):
        if not ranges:
            continue
        for a, b in ranges:
            weights[row, a:b] = 1.0
        if normalize:
            count = int(weights[row].sum())
            weights[row] *= 1.0 / count  # 1/count computed in double, as a Python float
    return weights


def pool_tokens(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sums over tokens in float32: ``(b, s, d)`` x ``(b, n, s)`` -> ``(b, n, d)``."""
    return torch.bmm(weights, hidden.float())


@dataclass
class TokenBatch:
    """One padded forward pass and the pooled outputs it yields.

    ``weights[i, j]`` pools sequence ``i`` into output row ``rows[i][j]``.
    """

    input_ids: torch.Tensor  # (b, s)
    attention_mask: torch.Tensor  # (b, s)
    weights: torch.Tensor  # (b, n, s) float32
    rows: list[list[int]]  # (b, n) output row of each pooled span set


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def pooled_activations(
    model: torch.nn.Module,
    batches: Sequence[TokenBatch],
    n_outputs: int,
    layers: Sequence[int] | None = None,
    layers_path: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run every batch and pool each requested block's output: float32 ``(n_outputs, n_layers, hidden)``.

    Layers come out in the order of ``layers`` (default: every layer). Any steering installed on
    ``model`` acts during the pass, so capped activations are measured as the capped model computes them.
    """
    blocks = get_layers(model, layers_path)
    layer_list = check_layer_indices(list(range(len(blocks))) if layers is None else list(layers), len(blocks))
    hidden_size = model.config.get_text_config().hidden_size
    out = torch.zeros((n_outputs, len(layer_list), hidden_size))
    if not batches or not layer_list:
        return out
    deepest = max(layer_list)
    device = next(model.parameters()).device
    state: dict[str, Any] = {}
    slots: dict[int, list[int]] = {}
    for slot, layer in enumerate(layer_list):
        slots.setdefault(layer, []).append(slot)

    def make_hook(slot_positions: list[int], is_deepest: bool):
        def hook(_module, _inputs, output):
            hidden = _block_output(output)
            lo, hi = state["cols"]
            # a model spread over several GPUs (device_map="auto") has blocks on different devices
            pooled = pool_tokens(hidden[:, lo:hi], state["weights"].to(hidden.device))
            flat = pooled.reshape(-1, pooled.shape[-1]).to(state["acc"].device)
            for slot in slot_positions:
                state["acc"][:, slot] = flat
            if is_deepest:
                raise _StopForward

        return hook

    # One float32 buffer for the pooled outputs of every batch: nothing is allocated per layer or per
    # batch beyond the block output being pooled, whatever the number of layers kept.
    buffer = torch.empty((max(b.weights.shape[0] * b.weights.shape[1] for b in batches), len(layer_list), hidden_size), device=device)
    handles = [blocks[layer].register_forward_hook(make_hook(pos, layer == deepest)) for layer, pos in slots.items()]
    try:
        for batch in tqdm(batches, desc="activations", unit="batch", disable=not progress):
            # pool only the columns some span covers (prompts and padding hold no weight): the same sums, less work
            used = torch.nonzero(batch.weights.reshape(-1, batch.weights.shape[-1]).any(dim=0)).flatten()
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 0)
            state["cols"] = (lo, hi)
            state["weights"] = batch.weights[:, :, lo:hi].to(device)
            state["acc"] = acc = buffer[: batch.weights.shape[0] * batch.weights.shape[1]]
            try:
                model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
            except _StopForward:
                pass
            rows = torch.tensor([r for row in batch.rows for r in row], dtype=torch.long)
            out.index_copy_(0, rows, acc.cpu())
    finally:
        for handle in handles:
            handle.remove()
    return out


def span_batches(
    samples: Sequence[tuple[Sequence[int], Span | Sequence[Span]]], max_batch_size: int, max_batch_tokens: int, pad_id: int
) -> list[TokenBatch]:
    """Right-padded, length-sorted batches pooling each sample's span(s) into one output row."""
    lengths = [len(ids) for ids, _ in samples]
    batches = []
    for group in length_batches(lengths, max_batch_size, max_batch_tokens):
        ids, mask = pad_sequences([samples[i][0] for i in group], pad_id, side="right")
        ranges = [_as_ranges(samples[i][1]) for i in group]
        weights = span_weights(ranges, ids.shape[1]).unsqueeze(1)
        batches.append(TokenBatch(ids, mask, weights, [[i] for i in group]))
    return batches


def _as_ranges(span: Span | Sequence[Span]) -> list[Span]:
    if len(span) == 2 and all(isinstance(x, int) for x in span):
        return [(int(span[0]), int(span[1]))]  # type: ignore[arg-type]
    return [(int(a), int(b)) for a, b in span]  # type: ignore[misc]


def mean_activations_for_spans(
    model: torch.nn.Module,
    samples: Sequence[tuple[Sequence[int], Span | Sequence[Span]]],
    layers: Sequence[int] | None = None,
    max_batch_size: int = 32,
    max_batch_tokens: int = 16384,
    pad_id: int = 0,
    layers_path: str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Mean block output over each sample's token span(s): float32 ``(n_samples, n_layers, hidden)``.

    ``samples`` are ``(input_ids, span)`` pairs, where ``span`` is one ``(start, end)`` range or a
    list of them (the tokens of several assistant turns, averaged together).
    """
    batches = span_batches(samples, max_batch_size, max_batch_tokens, pad_id)
    return pooled_activations(model, batches, len(samples), layers, layers_path, progress)


def sequence_span_means(
    model: torch.nn.Module,
    ids: Sequence[int],
    spans: Sequence[Span | None],
    layers: Sequence[int],
    layers_path: str | None = None,
) -> torch.Tensor:
    """Mean block output over several spans of one sequence, in one pass: ``(n_spans, n_layers, hidden)``.

    Empty spans (``None``) give NaN rows.
    """
    weights = span_weights([None if s is None else [s] for s in spans], len(ids)).unsqueeze(0)
    ids_t = torch.tensor([list(ids)], dtype=torch.long)
    batch = TokenBatch(ids_t, torch.ones_like(ids_t), weights, [list(range(len(spans)))])
    out = pooled_activations(model, [batch], len(spans), layers, layers_path)
    for row, span in enumerate(spans):
        if span is None:
            out[row] = float("nan")
    return out


TURNS = ("all", "last", "each")


def extract_response_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    layers: Sequence[int] | None = None,
    max_batch_size: int = 32,
    max_batch_tokens: int = 16384,
    layers_path: str | None = None,
    progress: bool = False,
    turns: str = "all",
) -> torch.Tensor | list[torch.Tensor]:
    """Mean block output over the assistant tokens of each conversation (the reference README's call).

    ``turns``:

    * ``"all"`` (default, the reference's per-conversation activation): one mean over the tokens of
      **every** assistant message together; float32 ``(n_conversations, n_layers, hidden)``.
    * ``"last"``: the last assistant message only (this project's single-turn extraction; the same
      as ``"all"`` for one-turn conversations); same shape.
    * ``"each"``: one mean per assistant message; a list with one float32
      ``(n_assistant_turns, n_layers, hidden)`` tensor per conversation (the reference pipeline's
      ``2_activations.py`` averages these per-turn means with equal weight per turn).

    Layer ``L`` is the output of block ``L``; only message contents count (no template tokens, no
    end-of-turn token). A conversation with no non-empty assistant message raises ``SpanError``.
    """
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {TURNS}, got {turns!r}")
    pad_id = tokenizer.pad_token_id or 0
    encoded = [encode_conversation(tokenizer, conv) for conv in conversations]
    if turns == "last":
        samples = [(enc.input_ids, enc.span_of_last("assistant")) for enc in encoded]
    else:
        samples = []
        per_conv = []
        for enc in encoded:
            spans = [span for msg, span in zip(enc.messages, enc.spans) if msg["role"] == "assistant" and span is not None]
            if not spans:
                enc.span_of_last("assistant")  # raises the SpanError that names the problem
            per_conv.append(len(spans))
            if turns == "all":
                samples.append((enc.input_ids, spans))
            else:
                samples.extend((enc.input_ids, span) for span in spans)
    acts = mean_activations_for_spans(model, samples, layers, max_batch_size, max_batch_tokens, pad_id, layers_path, progress)
    if turns != "each":
        return acts
    return list(torch.split(acts, per_conv))
