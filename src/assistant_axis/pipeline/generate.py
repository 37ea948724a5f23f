"""Stage ``generate``: responses for every role x system prompt x question of one shard of roles."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..conversation import build_conversation, substitute_model_name
from ..generation import Generated, SamplingSettings, generate_batch
from ..models import resolve_backend
from ..roles import DEFAULT_ROLE, Question, Role, load_questions, load_roles
from ..storage import write_parquet
from .cache import UnitCache, group_units, resume
from .layout import derive_seed, fingerprint, sample_key
from .model import read_model_json

log = logging.getLogger(__name__)

RESPONSE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("role", pa.string()),
        ("prompt_index", pa.int32()),
        ("question_id", pa.int32()),
        ("system_prompt", pa.string()),
        ("question", pa.string()),
        ("response", pa.string()),
        ("n_tokens", pa.int32()),
        ("finished", pa.bool_()),
    ]
)


def role_samples(role: Role, questions: Sequence[Question], n_prompts: int, model_name: str) -> list[dict[str, Any]]:
    """The (system prompt, question) pairs a role is asked: its first ``n_prompts`` prompts x all questions."""
    out = []
    for p_idx, prompt in enumerate(role.prompts[:n_prompts]):
        system = substitute_model_name(prompt, model_name)
        for q in questions:
            out.append(
                {
                    "key": sample_key(role.name, p_idx, q.id),
                    "role": role.name,
                    "prompt_index": p_idx,
                    "question_id": q.id,
                    "system_prompt": system,
                    "question": q.text,
                }
            )
    return out


class Generator:
    """Loads the backend once per job and generates for groups of samples.

    ``hf``: HF ``generate``, one group after another (each group is one seeded random stream).
    ``vllm``: one engine for the whole job; every unfinished group is queued at once (so vLLM's
    batch stays full across group boundaries) and each group is returned as soon as it is done.
    """

    def __init__(self, backend: str, model_path: str, dtype: str, device: str, vllm_options: dict[str, Any]) -> None:
        self.backend = backend
        if backend == "hf":
            from ..models import load_model

            self.model, self.tokenizer = load_model(model_path, dtype=dtype, device=device)
        elif backend == "vllm":
            from ..vllm_backend import VLLMEngine

            self.engine = VLLMEngine(model_path, dtype=dtype, hooks=False, **vllm_options)
        else:
            raise ValueError(f"generation backend {backend!r} is not 'hf' or 'vllm' (config key 'backend')")

    def close(self) -> None:
        """Free the engine (vLLM's processes and KV cache) before another model is loaded in the same job."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    def generate(self, samples: list[dict[str, Any]], settings: SamplingSettings, batch_size: int) -> list[Generated]:
        convs = [build_conversation(s["system_prompt"], s["question"]) for s in samples]
        if self.backend == "hf":
            return generate_batch(self.model, self.tokenizer, convs, settings, batch_size=batch_size)
        return self.engine.generate(convs, settings)

    def generate_groups(
        self, groups: Sequence[tuple[list[dict[str, Any]], SamplingSettings]], batch_size: int
    ) -> Iterator[tuple[int, list[Generated]]]:
        """``(group index, replies)`` for every group: as each finishes (vLLM) or in order (HF)."""
        if self.backend == "hf":
            for k, (samples, settings) in enumerate(groups):
                yield k, self.generate(samples, settings, batch_size)
            return
        from ..vllm_backend import Batch

        batches = [Batch([build_conversation(s["system_prompt"], s["question"]) for s in samples], settings, None)
                   for samples, settings in groups]
        yield from self.engine.generate_batches(batches)


def generate_shard(
    *,
    model_json: str,
    roles_dir: str,
    questions_file: str,
    roles: list[str],
    backend: str,
    dtype: str,
    device: str,
    n_prompts: int,
    n_default_prompts: int,
    n_questions: int,
    generation: dict[str, Any],
    batch_size: int,
    vllm_options: dict[str, Any],
    cache_dir: str,
    output: str,
) -> None:
    """Generate every sample of ``roles`` into ``output`` (Parquet), resuming from the per-role cache.

    ``backend``: ``hf``, ``vllm`` or ``auto`` (vLLM where it is installed); the file's metadata
    records the one used.
    """
    backend = resolve_backend(backend)
    facts = read_model_json(model_json)
    role_defs = load_roles(roles_dir, roles)
    questions = load_questions(questions_file)[:n_questions]
    settings_base = SamplingSettings(**generation)
    samples = {
        r: role_samples(role_defs[r], questions, n_default_prompts if r == DEFAULT_ROLE else n_prompts, facts["short_name"])
        for r in roles
    }
    groups = group_units(roles, {r: len(s) for r, s in samples.items()}, batch_size)
    common = {"model": facts["spec"], "backend": backend, "dtype": dtype, "gen": generation, "batch": batch_size}
    fingerprints = {}
    for group in groups:
        fp = fingerprint({**common, "samples": [samples[r] for r in group], "group": group})
        fingerprints.update({r: fp for r in group})
    generator: Generator | None = None

    def compute_all(todo: list[Sequence[str]]) -> Iterator[dict[str, pa.Table]]:
        nonlocal generator
        if generator is None:
            generator = Generator(backend, facts["path"], dtype, device, vllm_options)
        jobs = []
        for group in todo:
            group_samples = [s for r in group for s in samples[r]]
            jobs.append((group_samples, SamplingSettings(**{**generation, "seed": derive_seed(settings_base.seed, *group)})))
        for k, results in generator.generate_groups(jobs, batch_size):
            group_samples = jobs[k][0]
            yield {
                role: pa.Table.from_pylist(
                    [
                        {**s, "response": g.text, "n_tokens": g.n_tokens, "finished": g.finished}
                        for s, g in zip(group_samples, results, strict=True)
                        if s["role"] == role
                    ],
                    schema=RESPONSE_SCHEMA,
                )
                for role in todo[k]
            }

    tables = resume(UnitCache(cache_dir), groups, fingerprints, None, "generate", compute_all=compute_all)
    out = pa.concat_tables([tables[r] for r in roles])
    write_parquet(Path(output), out.replace_schema_metadata({"model": facts["spec"], "backend": backend}))
