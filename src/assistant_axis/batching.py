"""Token batches: length-sorted grouping under a token budget, and padding.

Every forward pass in the project (generation, extraction, monitoring, evaluation) goes through
these two routines, so the padding side and the batch budget are decided in one place:

* generation pads on the **left**, so every prompt ends at the last column and new tokens follow;
* scoring passes (activations, log-likelihoods) pad on the **right**, which keeps position ids
  plain (0..n-1), so an intervention that skips position 0 skips the same token as in generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the sequences padded to the longest, on ``side`` (left or right)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def length_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted ascending).

    A batch holds at most ``max_batch_size`` sequences and, when ``max_batch_tokens`` is given, at
    most that many tokens once padded to its longest member; a single sequence longer than the
    budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the newcomer is the longest
        too_many = len(current) >= max_batch_size
        too_long = max_batch_tokens is not None and longest * (len(current) + 1) > max_batch_tokens
        if current and (too_many or too_long):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups
