"""Top-p without a vocabulary sort (assistant_axis.vllm_sampling) against vLLM's own implementation.

The fast filter must give exactly vLLM's result, so these compare whole logit tensors with
``torch.equal`` on distributions from flat to peaked, on bf16-rounded logits (many ties), with
per-row ``p`` (including 1.0) and on rows that have to fall back to the full sort.
"""

from __future__ import annotations

import pytest
import torch
from vllm.v1.sample.ops import topk_topp_sampler as sampler

from assistant_axis import vllm_sampling

pytestmark = pytest.mark.vllm
VOCAB = 49152


def _vllm(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    return sampler.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)


def _logits(scale: float, rows: int = 64, seed: int = 0, bf16: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, VOCAB, generator=g) * scale
    x[:, :8] += torch.rand(rows, 8, generator=g) * scale * 3  # a few likely tokens, as in a trained model
    return x.to(torch.bfloat16).float() if bf16 else x


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0, 8.0, 30.0])
def test_equals_vllm_top_p(scale, bf16):
    logits = _logits(scale, bf16=bf16)
    p = torch.full((logits.shape[0],), 0.9)
    p[::5], p[::7], p[::11] = 0.5, 1.0, 0.999
    want = _vllm(logits.clone(), None, p)
    got = vllm_sampling.nucleus_filter(logits.clone(), p, _vllm)
    assert torch.equal(got, want)
    assert torch.isinf(want).any()  # the filter did drop tokens


def test_ties_across_the_edge_are_left_to_the_full_sort():
    """bf16 logits tie often; the full sort keeps an arbitrary subset of tied tokens at the edge."""
    logits = torch.full((4, VOCAB), -20.0)
    logits[:, :10] = 5.0  # ten equal top tokens: p=0.45 keeps 4.5 of them, a tie straddles the edge
    p = torch.full((4,), 0.45)
    calls = []

    def spy(rows, k, pp):
        calls.append(rows.shape[0])
        return _vllm(rows, k, pp)

    got = vllm_sampling.nucleus_filter(logits.clone(), p, spy)
    assert calls == [4]
    assert torch.equal(got, _vllm(logits.clone(), None, p))


def test_rows_settled_without_the_sort():
    logits = _logits(8.0, rows=32, seed=3)
    p = torch.full((32,), 0.9)
    calls = []
    got = vllm_sampling.nucleus_filter(logits.clone(), p, lambda r, k, pp: calls.append(r.shape[0]) or _vllm(r, k, pp))
    assert sum(calls) < 32 // 4  # most rows never reach the full sort
    assert torch.equal(got, _vllm(logits.clone(), None, p))


def test_install_routes_top_p_only_and_is_idempotent(monkeypatch):
    original = vllm_sampling.vllm_top_p()  # an engine started earlier in this process may have installed it
    monkeypatch.setattr(sampler, "apply_top_k_top_p", original)
    assert vllm_sampling.install() and vllm_sampling.install()
    patched = sampler.apply_top_k_top_p
    assert patched is not original
    logits = _logits(4.0, rows=8, bf16=True)
    p, k = torch.full((8,), 0.9), torch.full((8,), 20)
    assert torch.equal(patched(logits.clone(), None, p), original(logits.clone(), None, p))
    assert torch.equal(patched(logits.clone(), k, p), original(logits.clone(), k, p))  # top-k: vLLM's own
    assert torch.equal(patched(logits.clone(), k, None), original(logits.clone(), k, None))
