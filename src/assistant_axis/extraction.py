"""Mean response activations of many layers, accumulated inside forward hooks.

Each hook reduces its block's output to one mean vector per sample right away, so memory holds
``batch x layers x hidden`` floats, never ``layers x batch x seq x hidden``. The forward pass is cut
short after the deepest requested layer (the LM head never runs), and samples are batched by
token length so little compute goes to padding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .conversation import Message, encode_conversation
from .layers import check_layer_indices, get_layers

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


@dataclass
class _Batch:
    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    weights: torch.Tensor  # (batch, seq) float: 1/len over the span, 0 elsewhere


def _make_batches(
    encoded: Sequence[tuple[list[int], tuple[int, int]]], max_batch_size: int, max_batch_tokens: int, pad_id: int
) -> list[_Batch]:
    """Group samples of similar length (sorted), bounded by count and padded token budget."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(encoded[i][0])  # sorted ascending: the newcomer is the longest
        if current and (len(current) >= max_batch_size or longest * (len(current) + 1) > max_batch_tokens):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    batches = []
    for group in groups:
        seq = max(len(encoded[i][0]) for i in group)
        ids = torch.full((len(group), seq), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), seq), dtype=torch.long)
        weights = torch.zeros((len(group), seq), dtype=torch.float32)
        for row, i in enumerate(group):
            tokens, (a, b) = encoded[i]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1  # right padding keeps position ids plain
            weights[row, a:b] = 1.0 / (b - a)
        batches.append(_Batch(group, ids, mask, weights))
    return batches


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def mean_activations_for_spans(
    model: torch.nn.Module,
    samples: Sequence[tuple[list[int], tuple[int, int]]],
    layers: Sequence[int] | None = None,
    max_batch_size: int = 32,
    max_batch_tokens: int = 16384,
    pad_id: int = 0,
    layers_path: str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Mean output of each requested block over each sample's token span.

    ``samples`` are ``(input_ids, (start, end))`` pairs. Returns float32 ``(n_samples, n_layers, hidden)``
    in the order of ``layers`` (default: every layer).
    """
    blocks = get_layers(model, layers_path)
    layer_list = check_layer_indices(list(range(len(blocks))) if layers is None else list(layers), len(blocks))
    if not samples:
        return torch.zeros((0, len(layer_list), model.config.get_text_config().hidden_size))
    deepest = max(layer_list)
    hidden_size = model.config.get_text_config().hidden_size
    device = next(model.parameters()).device
    out = torch.zeros((len(samples), len(layer_list), hidden_size))
    state: dict[str, Any] = {}

    def make_hook(slot_positions: list[int], is_deepest: bool):
        def hook(_module, _inputs, output):
            h = _hidden(output)
            means = torch.einsum("bs,bsd->bd", state["weights"], h.float())
            for slot in slot_positions:
                state["acc"][:, slot] = means
            if is_deepest:
                raise _StopForward

        return hook

    slots: dict[int, list[int]] = {}
    for slot, layer in enumerate(layer_list):
        slots.setdefault(layer, []).append(slot)
    handles = [blocks[layer].register_forward_hook(make_hook(pos, layer == deepest)) for layer, pos in slots.items()]
    try:
        batches = _make_batches(samples, max_batch_size, max_batch_tokens, pad_id)
        for batch in tqdm(batches, desc="activations", unit="batch", disable=not progress):
            state["weights"] = batch.weights.to(device)
            state["acc"] = acc = torch.zeros((len(batch.indices), len(layer_list), hidden_size), device=device)
            try:
                model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
            except _StopForward:
                pass
            out[batch.indices] = acc.cpu()
    finally:
        for handle in handles:
            handle.remove()
    return out


def extract_response_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    layers: Sequence[int] | None = None,
    max_batch_size: int = 32,
    max_batch_tokens: int = 16384,
    layers_path: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean activation over the last assistant message of each conversation.

    Returns float32 ``(n_conversations, n_layers, hidden)``; layer ``L`` is the output of block ``L``.
    """
    samples = []
    for conv in conversations:
        enc = encode_conversation(tokenizer, conv)
        samples.append((enc.input_ids, enc.span_of_last("assistant")))
    return mean_activations_for_spans(
        model, samples, layers, max_batch_size, max_batch_tokens, tokenizer.pad_token_id or 0, layers_path, progress
    )
