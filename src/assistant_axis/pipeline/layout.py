"""Names of everything the pipeline writes, made in one place (the Snakefile, the stages and the CLI share them).

One name per stage, end to end: a stage's rule file, rule, script, library module, results
subfolder, log and benchmark file all carry the stage's name, so ``results/<run>/<stage>/``,
``results/<run>/logs/<stage>[_<shard>].log`` and ``results/<run>/benchmarks/<stage>[_<shard>].tsv``.
Resumable stages keep their finished units under ``results/<run>/cache/<stage>/``. A stage across
runs (``compare_models``) uses the pseudo-run :data:`ALL_RUNS`: ``results/_all/<stage>/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

RESULTS = "results"
# The pseudo-run whose folder holds what belongs to no single run (compare_models): its leading
# underscore keeps it apart from run names, which must start with a letter or a digit.
ALL_RUNS = "_all"

# In pipeline order; every name is a rule, a rule file, a script and a module of assistant_axis.pipeline.
STAGES = (
    "model",
    "generate",
    "extract",
    "judge",
    "role_vectors",
    "axis",
    "persona_space",
    "calibrate",
    "evaluate_capping",
    "drift",
    "trait_vectors",
    "interpret",
    "stability",
    "drift_analysis",
    "compare_models",
)


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's files; ``run`` may be a Snakemake wildcard such as ``"{run}"``."""

    run: str
    root: str = RESULTS

    def stage(self, stage: str, name: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return f"{self.root}/{self.run}/{stage}/{name}"

    def shard(self, stage: str, shard: str = "{shard}") -> str:
        return self.stage(stage, f"shard_{shard}.parquet")

    def log(self, stage: str, shard: str | None = None) -> str:
        return f"{self.root}/{self.run}/logs/{stage}{'' if shard is None else '_' + shard}.log"

    def benchmark(self, stage: str, shard: str | None = None) -> str:
        return f"{self.root}/{self.run}/benchmarks/{stage}{'' if shard is None else '_' + shard}.tsv"

    def cache(self, stage: str, name: str = "") -> str:
        return f"{self.root}/{self.run}/cache/{stage}" + (f"/{name}" if name else "")

    # the files other tools look up by run name
    @property
    def model_json(self) -> str:
        return self.stage("model", "model.json")

    @property
    def axis(self) -> str:
        return self.stage("axis", "axis.safetensors")

    @property
    def capping(self) -> str:
        return self.stage("calibrate", "capping.safetensors")


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
