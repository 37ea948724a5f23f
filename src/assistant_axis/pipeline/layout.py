"""Names of everything the pipeline writes, made in one place (the Snakefile and the stages share them)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def shard_roles(roles: list[str], n_shards: int) -> list[list[str]]:
    """Split roles into ``n_shards`` balanced shards (round robin over the given order)."""
    n = max(1, min(n_shards, len(roles)))
    return [roles[i::n] for i in range(n)]


def shard_names(roles: list[str], n_shards: int) -> list[str]:
    return [f"{i:03d}" for i in range(len(shard_roles(roles, n_shards)))]


def sample_key(role: str, prompt_index: int, question_id: int) -> str:
    return f"{role}/p{prompt_index}/q{question_id}"


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able settings, used to name cache entries."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def derive_seed(seed: int, *parts: str) -> int:
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).hexdigest()
    return int(digest[:8], 16)


def layer_column(layer: int) -> str:
    return f"layer_{layer:03d}"
