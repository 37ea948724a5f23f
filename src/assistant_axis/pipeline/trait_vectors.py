"""Stage ``trait_vectors``: a vector per trait from replies that show it and replies that avoid it.

For every trait (``assistant_axis.traits``), each of its first ``n_pairs`` instruction pairs is used
as a system prompt on both sides (``pos``: show the trait, ``neg``: avoid it) with each of its first
``n_questions`` questions. Then:

1. **generate** the replies with the run's engine (:class:`.generate.Generator`, HF or vLLM as the
   run's ``backend`` says), resumable per group of traits;
2. **score** each reply 0-100 for trait expression with the trait's eval prompt (the offline
   heuristic for the embedded default, else the configured API judge; ``REFUSAL`` and unparsable
   replies are missing and count on neither side); verdicts are cached by prompt;
3. **extract** the kept replies' mean activations (the same pooling as the ``extract`` stage: the
   mean over the reply's content tokens of each block's output), resumable per group of traits;
4. **trait vector** per layer: ``mean(pos replies scored >= positive_min) - mean(neg replies scored
   <= negative_max)``. A trait whose kept replies are fewer than ``min_count`` on either side gets
   no vector (``trait_counts.csv`` says why). Empty replies have no tokens and are left out.

Outputs: ``trait_vectors.safetensors`` (trait -> float32 ``(total layers, hidden)``; rows of layers
extraction does not store are zero, the metadata ``layers`` lists the stored ones),
``trait_responses.parquet`` (every reply with its score), ``trait_counts.csv`` and
``trait_scores.png`` (mean score of each trait's pos and neg replies: do the instructions work?).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ..generation import SamplingSettings
from ..judges import TRAIT_SCALE, JudgeItem, is_refusal, make_judge
from ..judges.trait_rules import is_trait_prompt
from ..models import resolve_backend
from ..plots import trait_scores_plot
from ..storage import save_safetensors, write_parquet, write_text
from ..traits import SIDES, Trait, TraitSetError, load_traits
from .cache import UnitCache, group_units, resume
from .extract import ReplyActivations
from .generate import Generator
from .layout import derive_seed, fingerprint
from .model import read_model_json

log = logging.getLogger(__name__)

RESPONSE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("trait", pa.string()),
        ("side", pa.string()),
        ("pair", pa.int32()),
        ("question_id", pa.int32()),
        ("system_prompt", pa.string()),
        ("question", pa.string()),
        ("response", pa.string()),
        ("n_tokens", pa.int32()),
        ("finished", pa.bool_()),
    ]
)
MEANS_SCHEMA = pa.schema([("side", pa.string()), ("count", pa.int32()), ("values", pa.list_(pa.float32()))])


def trait_samples(trait: Trait, n_pairs: int, n_questions: int) -> list[dict[str, Any]]:
    """Every (side, pair, question) of a trait, keyed ``trait/side/pP/qQ``."""
    return [
        {"key": f"{trait.name}/{side}/p{p}/q{q}", "trait": trait.name, "side": side, "pair": p, "question_id": q,
         "system_prompt": trait.instruction(side, p), "question": trait.questions[q]}
        for side in SIDES for p in range(n_pairs) for q in range(n_questions)
    ]


def keep_mask(sides: Sequence[str], scores: Sequence[float], responses: Sequence[str], positive_min: float, negative_max: float) -> np.ndarray:
    """Which replies enter the vector: pos scored >= ``positive_min``, neg scored <= ``negative_max``,
    a score present (missing = REFUSAL or unparsable) and a non-empty reply."""
    s = np.asarray(scores, dtype=float)
    side = np.asarray(sides)
    nonempty = np.array([bool(r.strip()) for r in responses], dtype=bool)
    scored = np.isfinite(s)
    return scored & nonempty & (((side == "pos") & (s >= positive_min)) | ((side == "neg") & (s <= negative_max)))


def build_trait_vectors(
    *, model_json: str, traits_dir: str, traits: str | list[str], n_pairs: int, n_questions: int, backend: str, dtype: str,
    device: str, vllm_options: dict[str, Any], generation: dict[str, Any], batch_size: int, judge: dict[str, Any],
    judge_cache: str, positive_min: float, negative_max: float, min_count: int, extraction_batch_size: int,
    max_batch_tokens: int, layers: Sequence[int] | None, cache_dir: str, vectors_out: str, responses_out: str,
    counts_out: str, plot_out: str, title: str = "",
) -> pd.DataFrame:
    """The whole stage (see the module docstring); returns the per-trait counts table."""
    t_start = time.monotonic()
    facts = read_model_json(model_json)
    trait_set = load_traits(traits_dir, traits, n_pairs=n_pairs, n_questions=n_questions)
    if judge.get("backend", "offline") == "offline":
        unread = [n for n, t in trait_set.items() if not is_trait_prompt(t.judge_prompt("q", "a"))]
        if unread:
            raise TraitSetError(
                f"{traits_dir}: the offline judge cannot read the eval_prompt of {', '.join(unread[:5])} (it needs "
                "'trait: **name**' and the [ANSWER START]/[ANSWER END] markers); fix the prompts or use an API judge "
                "(config key 'trait_vectors.judge')"
            )
    names = list(trait_set)
    backend = resolve_backend(backend)
    total = int(facts["total_layers"])
    layer_list = list(range(total)) if layers is None else sorted(int(x) for x in layers)
    samples = {n: trait_samples(trait_set[n], n_pairs, n_questions) for n in names}
    log.info("trait vectors: %d traits x %d pairs x %d questions x 2 sides = %d replies, %s backend, %d new tokens",
             len(names), n_pairs, n_questions, sum(len(s) for s in samples.values()), backend, generation["max_new_tokens"])

    replies = _generate(samples, names, facts, backend, dtype, device, vllm_options, generation, batch_size, Path(cache_dir) / "generate")
    t_gen = time.monotonic()
    frame = pa.concat_tables([replies[n] for n in names]).to_pandas()

    judge_impl = make_judge(judge, judge_cache, scale=TRAIT_SCALE)
    items = [JudgeItem(k, trait_set[t].judge_prompt(q, r)) for k, t, q, r in zip(frame["key"], frame["trait"], frame["question"], frame["response"], strict=True)]
    verdicts = {v.key: v for v in judge_impl.judge(items)}
    frame["score"] = pd.array([verdicts[k].score for k in frame["key"]], dtype="Int16")
    frame["raw"] = [verdicts[k].raw for k in frame["key"]]
    frame["refusal"] = [is_refusal(r) for r in frame["raw"]]
    frame["kept"] = keep_mask(frame["side"], frame["score"].to_numpy(dtype=float, na_value=np.nan), frame["response"], positive_min, negative_max)
    t_judge = time.monotonic()

    counts = _counts(frame, names, min_count)
    with_vector = counts.loc[counts["vector"], "trait"].tolist()
    means = _extract(frame[frame["kept"] & frame["trait"].isin(with_vector)], with_vector, facts, dtype, device,
                     extraction_batch_size, max_batch_tokens, layers, layer_list, Path(cache_dir) / "extract")
    t_extract = time.monotonic()

    tensors = {}
    for name in with_vector:
        full = torch.zeros((total, means[name]["pos"].shape[-1]))
        full[layer_list] = means[name]["pos"] - means[name]["neg"]
        tensors[name] = full
    meta = {
        "model": facts["spec"], "layers": json.dumps(layer_list), "positive_min": str(positive_min), "negative_max": str(negative_max),
        "min_count": str(min_count), "judge": f"{judge_impl.backend}/{judge_impl.model}", "traits_dir": str(traits_dir),
        "definition": "mean(pos replies scored >= positive_min) - mean(neg replies scored <= negative_max), per layer",
    }
    if tensors:
        save_safetensors(vectors_out, tensors, metadata=meta)
    else:
        raise ValueError(
            f"no trait reached {min_count} kept replies on both sides (of {len(names)} traits); lower config key "
            "'trait_vectors.min_count', widen the score thresholds, or ask more questions per trait"
        )
    write_parquet(responses_out, pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(
        {"model": facts["spec"], "judge": f"{judge_impl.backend}/{judge_impl.model}", "backend": backend}))
    write_text(counts_out, counts.to_csv(index=False))
    trait_scores_plot(counts, plot_out, positive_min, negative_max,
                      title=f"{title + ': ' if title else ''}trait scores under the pos and neg instructions ({judge_impl.backend}/{judge_impl.model})")
    log.info("trait vectors: %d of %d traits have a vector; generation %.1f s, judge %.1f s, extraction %.1f s, total %.1f s",
             len(tensors), len(names), t_gen - t_start, t_judge - t_gen, t_extract - t_judge, time.monotonic() - t_start)
    return counts


def _generate(
    samples: dict[str, list[dict[str, Any]]], names: list[str], facts: dict[str, Any], backend: str, dtype: str, device: str,
    vllm_options: dict[str, Any], generation: dict[str, Any], batch_size: int, cache_dir: Path,
) -> dict[str, pa.Table]:
    """Replies of every trait, from the per-trait cache where present (groups of traits share a batch and a seed)."""
    groups = group_units(names, {n: len(s) for n, s in samples.items()}, batch_size)
    common = {"model": facts["spec"], "backend": backend, "dtype": dtype, "gen": generation, "batch": batch_size}
    fingerprints = {}
    for group in groups:
        fp = fingerprint({**common, "samples": [samples[n] for n in group], "group": group})
        fingerprints.update({n: fp for n in group})
    base_seed = int(generation.get("seed", 0))

    def compute_all(todo: list[Sequence[str]]) -> Iterator[dict[str, pa.Table]]:
        generator = Generator(backend, facts["path"], dtype, device, vllm_options)
        try:
            jobs = [([s for n in group for s in samples[n]],
                     SamplingSettings(**{**generation, "seed": derive_seed(base_seed, "traits", *group)})) for group in todo]
            for k, results in generator.generate_groups(jobs, batch_size):
                rows = [{**s, "response": g.text, "n_tokens": g.n_tokens, "finished": g.finished}
                        for s, g in zip(jobs[k][0], results, strict=True)]
                yield {n: pa.Table.from_pylist([r for r in rows if r["trait"] == n], schema=RESPONSE_SCHEMA) for n in todo[k]}
        finally:
            generator.close()

    return resume(UnitCache(cache_dir), groups, fingerprints, None, "trait_vectors (generate)", compute_all=compute_all)


def _counts(frame: pd.DataFrame, names: list[str], min_count: int) -> pd.DataFrame:
    """Per trait and side: replies, kept, missing scores, refusals, mean score; whether a vector is built."""
    rows = []
    for name in names:
        sub = frame[frame["trait"] == name]
        row: dict[str, Any] = {"trait": name}
        for side in SIDES:
            part = sub[sub["side"] == side]
            scores = part["score"].dropna().astype(float)
            row.update({
                f"{side}_replies": len(part), f"{side}_kept": int(part["kept"].sum()), f"{side}_missing": int(part["score"].isna().sum()),
                f"{side}_refusals": int(part["refusal"].sum()), f"{side}_mean_score": float(scores.mean()) if len(scores) else np.nan,
            })
        row["vector"] = bool(row["pos_kept"] >= min_count and row["neg_kept"] >= min_count)
        rows.append(row)
    counts = pd.DataFrame(rows)
    missing = int(counts["pos_missing"].sum() + counts["neg_missing"].sum())
    if missing:
        log.warning("trait scores: %d replies are missing (REFUSAL or unparsable) and count on neither side", missing)
    return counts


def _extract(
    kept: pd.DataFrame, names: list[str], facts: dict[str, Any], dtype: str, device: str, batch_size: int, max_batch_tokens: int,
    layers: Sequence[int] | None, layer_list: list[int], cache_dir: Path,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{trait: {"pos": (stored layers, hidden), "neg": ...}}`` means of the kept replies, resumable per trait."""
    by_trait = {n: kept[kept["trait"] == n] for n in names}
    groups = group_units(names, {n: len(t) for n, t in by_trait.items()}, batch_size * 4)
    fingerprints = {
        n: fingerprint({"model": facts["spec"], "dtype": dtype, "layers": layer_list,
                        "rows": by_trait[n][["key", "system_prompt", "question", "response"]].to_dict("records")})
        for n in names
    }
    pool = ReplyActivations(facts, dtype, device, None if layers is None else layer_list, batch_size, max_batch_tokens)

    def compute(group: Sequence[str]) -> dict[str, pa.Table]:
        rows = pd.concat([by_trait[n] for n in group])
        acts = pool(rows[["system_prompt", "question", "response"]].to_dict("records"))
        out = {}
        for name in group:
            mask = torch.from_numpy((rows["trait"] == name).to_numpy())
            entries = []
            for side in SIDES:
                sel = mask & torch.from_numpy((rows["side"] == side).to_numpy())
                entries.append({"side": side, "count": int(sel.sum()), "values": acts[sel].mean(0).reshape(-1).tolist()})
            out[name] = pa.Table.from_pylist(entries, schema=MEANS_SCHEMA)
        return out

    tables = resume(UnitCache(cache_dir), groups, fingerprints, compute, "trait_vectors (extract)") if names else {}
    means = {}
    for name, table in tables.items():
        means[name] = {}
        for row in table.to_pylist():
            means[name][row["side"]] = torch.tensor(row["values"], dtype=torch.float32).reshape(len(layer_list), -1)
    return means


def load_trait_vectors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({trait: (layers, hidden)}, metadata)`` from the stage's safetensors file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
        vectors = {k: f.get_tensor(k).float() for k in f.keys()}
    if not vectors:
        raise ValueError(f"{path}: no trait vectors; rerun the trait_vectors stage")
    return vectors, meta
