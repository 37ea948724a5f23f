"""Judges: score role-play replies 0-3 with one interface over several backends, through a cache.

``make_judge(cfg, cache_path)`` builds the backend named by ``cfg["backend"]``:

* ``offline`` (default, model ``heuristic-v2``): a deterministic rule-based judge, no model needed;
* ``local``: a local HF chat model compares its probabilities of the replies "0".."3";
* ``anthropic``: Claude via the official SDK, concurrent calls or the Message Batches API;
* ``openai``: any OpenAI-compatible endpoint (``base_url``), e.g. OpenAI or a vLLM server.

Trait eval prompts are scored on a 0-100 scale instead (``make_judge(..., scale="0-100")``).

Every verdict is cached in SQLite under (backend, model, sha256(prompt)) with the raw reply, so a
rerun never pays twice for the same prompt. See ``docs/judges.md`` for the configuration keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .api import JudgeAPIError
from .base import (
    ROLE_SCALE,
    SCALES,
    TRAIT_SCALE,
    BudgetExceededError,
    CostEstimate,
    Judge,
    JudgeError,
    JudgeItem,
    JudgeReport,
    MissingAPIKeyError,
    Verdict,
    is_refusal,
    parse_score,
    parse_trait_score,
    prompt_sha256,
)
from .cache import VerdictCache

BACKENDS = ("offline", "local", "anthropic", "openai")
DEFAULT_BUDGET_USD = 5.0


def make_judge(cfg: Mapping[str, Any], cache_path: str | Path, scale: str = ROLE_SCALE) -> Judge:
    """Build the judge ``cfg`` describes, caching verdicts in the SQLite file ``cache_path``.

    ``scale``: ``"0-3"`` (role-play and harm rubrics, the default) or ``"0-100"`` (trait eval
    prompts: ``REFUSAL`` or a number; REFUSAL and unparsable replies are missing). The offline
    backend scores 0-100 prompts with its trait rules (model ``trait-heuristic-v1``,
    :mod:`.trait_rules`); the local backend only knows 0-3 and refuses.

    Paid backends refuse to run above ``budget_usd`` (default ``DEFAULT_BUDGET_USD``; ``None`` = no
    limit) unless ``allow_over_budget`` is true. API keys are read from the environment only, when
    the first call is about to be made, so a fully cached rerun needs no key.
    """
    judge = _build(cfg, cache_path, scale)
    judge.scale = scale
    return judge


def _build(cfg: Mapping[str, Any], cache_path: str | Path, scale: str) -> Judge:
    backend = cfg.get("backend", "offline")
    if backend not in BACKENDS:
        raise JudgeError(f"unknown judge backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scale not in SCALES:
        raise JudgeError(f"unknown judge scale {scale!r}; one of {', '.join(SCALES)}")
    model = cfg.get("model")
    if backend == "offline":
        from .offline import MODEL, OfflineJudge
        from .trait_rules import MODEL as TRAIT_MODEL

        if model not in (None, MODEL, TRAIT_MODEL):
            raise JudgeError(f"offline judge: model must be {MODEL!r}, got {model!r}")
        return OfflineJudge(TRAIT_MODEL if scale == TRAIT_SCALE else MODEL, VerdictCache(cache_path))
    if backend == "local":
        if scale == TRAIT_SCALE:
            raise JudgeError(
                "the local judge scores 0-3 only (it compares the probabilities of the digits 0-3); "
                "score traits with the offline, anthropic or openai judge (config key 'trait_vectors.judge')"
            )
        from ..models import DEFAULT_MODEL as LOCAL_DEFAULT
        from .local import LocalJudge

        return LocalJudge(model or LOCAL_DEFAULT, VerdictCache(cache_path), cfg)
    cache = VerdictCache(cache_path)
    paid_cfg = {"budget_usd": DEFAULT_BUDGET_USD, **cfg}
    if backend == "anthropic":
        from .anthropic_backend import DEFAULT_MODEL as ANTHROPIC_DEFAULT
        from .anthropic_backend import AnthropicJudge

        state = cfg.get("batch_state_path") or f"{cache_path}.batches.json"
        return AnthropicJudge(model or ANTHROPIC_DEFAULT, cache, paid_cfg, Path(state))
    from .openai_backend import DEFAULT_MODEL as OPENAI_DEFAULT
    from .openai_backend import OpenAIJudge

    return OpenAIJudge(model or OPENAI_DEFAULT, cache, paid_cfg)


__all__ = [
    "BACKENDS",
    "ROLE_SCALE",
    "SCALES",
    "TRAIT_SCALE",
    "BudgetExceededError",
    "CostEstimate",
    "Judge",
    "JudgeAPIError",
    "JudgeError",
    "JudgeItem",
    "JudgeReport",
    "MissingAPIKeyError",
    "Verdict",
    "VerdictCache",
    "make_judge",
    "is_refusal",
    "parse_score",
    "parse_trait_score",
    "prompt_sha256",
]
