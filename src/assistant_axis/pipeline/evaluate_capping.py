"""Stage ``evaluate_capping``: measure every calibrated capping experiment on harm and capability, then recommend one.

``evaluate_capping`` runs each condition ("unsteered" plus the selected experiments) on the same
items: persona-jailbreak replies (HF generation under the cap), the NLL of default responses, and
multiple-choice letter log-probs; the unsteered condition also answers the bare requests (the
no-persona baseline). Each condition's results are cached under a fingerprint of everything that
produced them (:func:`assistant_axis.pipeline.cache.resume`), so a killed job resumes at the next
condition and a rerun for a changed recommendation bound loads no model. Replies are then scored by the
configured judge with the harm rubric (verdicts cached too).

``recommend_capping`` turns the per-condition metrics into the Pareto table, the plot and the
recommendation (rule in :data:`assistant_axis.evaluation.RULE`), and writes a copy of the calibrated
capping config with ``recommended`` set; the calibration's own outputs are never rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..capping import CappingConfig, CappingExperiment, parse_experiment_id
from ..evaluation import (
    RULE,
    Bounds,
    Jailbreak,
    MCItem,
    harm_items,
    load_jailbreaks,
    load_mc,
    load_rubric,
    mc_predictions,
    mc_scores,
    pareto_table,
    perplexity,
    response_nll,
)
from ..generation import SamplingSettings, generate_batch
from ..judges import make_judge
from ..models import resolve_backend
from ..roles import DEFAULT_ROLE
from ..storage import write_json, write_parquet, write_text
from .cache import UnitCache, resume
from .layout import fingerprint
from .model import read_model_json

log = logging.getLogger(__name__)

UNSTEERED = "unsteered"
NO_PERSONA = "no_persona"
DETAIL_SCHEMA = pa.schema(
    [
        ("condition", pa.string()),
        ("kind", pa.string()),  # jailbreak | no_persona | perplexity | mc | telemetry
        ("item", pa.string()),
        ("text", pa.string()),  # reply, or predicted letter (mc), or per-layer telemetry JSON
        ("n_tokens", pa.int32()),
        ("value", pa.float64()),  # NLL sum (perplexity), 1/0 correct (mc), share of positions capped (telemetry)
        ("extra", pa.string()),  # mc: JSON of the four option scores
    ]
)


def select_experiments(config: CappingConfig, percentiles: Sequence[float] | None) -> list[CappingExperiment]:
    """The calibrated experiments at the given percentiles (all when None), in calibration order."""
    if percentiles is None:
        return list(config.experiments)
    calibrated = sorted({parse_experiment_id(e.id)[2] for e in config.experiments})
    missing = [p for p in percentiles if not any(math.isclose(p, c) for c in calibrated)]
    if missing:
        raise ValueError(
            f"config key 'capping_eval.percentiles': {missing} not among the calibrated percentiles {calibrated} "
            "(config key 'capping.percentiles')"
        )
    return [e for e in config.experiments if any(math.isclose(parse_experiment_id(e.id)[2], p) for p in percentiles)]


def default_samples(responses: Sequence[str], n: int | None) -> list[dict[str, Any]]:
    """The first ``n`` non-empty default-role responses by key (all when None), for perplexity."""
    table = pa.concat_tables([pq.read_table(p, columns=["key", "role", "system_prompt", "question", "response"]) for p in responses])
    rows = [r for r in table.to_pylist() if r["role"] == DEFAULT_ROLE and r["response"].strip()]
    if not rows:
        raise ValueError("no non-empty default responses in the response shards: perplexity needs the 'default' role")
    rows.sort(key=lambda r: r["key"])
    return rows[:n] if n is not None else rows


def _experiment_fp(exp: CappingExperiment | None) -> Any:
    if exp is None:
        return None
    return [
        [c.layer, c.floor, hashlib.sha256(c.vector.float().contiguous().numpy().tobytes()).hexdigest()[:16]]
        for c in exp.caps
    ]


def _measure(
    model: Any, tokenizer: Any, condition: str, exp: CappingExperiment | None, jailbreaks: Sequence[Jailbreak],
    ppl: Sequence[dict[str, Any]], mc: Sequence[MCItem], mc_scoring: str, settings: SamplingSettings, batch_size: int,
) -> pa.Table:
    """All measurements of one condition as detail rows (see :data:`DETAIL_SCHEMA`)."""
    from ..steering import ActivationSteering

    rows: list[dict[str, Any]] = []
    steerer = None if exp is None else ActivationSteering.from_experiment(model, exp)
    with steerer if steerer is not None else contextlib.nullcontext():
        kinds = [("jailbreak", True)] + ([(NO_PERSONA, False)] if exp is None else [])
        for kind, with_persona in kinds:
            replies = generate_batch(model, tokenizer, [j.conversation(with_persona) for j in jailbreaks], settings, batch_size)
            rows += [
                {"condition": condition, "kind": kind, "item": str(j.id), "text": g.text, "n_tokens": g.n_tokens}
                for j, g in zip(jailbreaks, replies, strict=True)
            ]
        if steerer is not None:
            # telemetry of the jailbreak generation only: how often the floor acted while answering
            summary = steerer.telemetry_summary()
            seen = sum(int(t["tokens"]) for t in summary.values())
            capped = sum(int(t["capped"]) for t in summary.values())
            rows.append({"condition": condition, "kind": "telemetry", "item": "generation", "text": json.dumps(summary),
                         "n_tokens": seen, "value": capped / seen if seen else 0.0})
        nll = response_nll(model, tokenizer, [(r["system_prompt"], r["question"], r["response"]) for r in ppl], batch_size)
        rows += [
            {"condition": condition, "kind": "perplexity", "item": r["key"], "n_tokens": n, "value": s}
            for r, (s, n) in zip(ppl, nll, strict=True)
        ]
        logp = mc_scores(model, tokenizer, mc, mc_scoring, batch_size)
        for item, pred, lp in zip(mc, mc_predictions(logp), logp, strict=True):
            rows.append({"condition": condition, "kind": "mc", "item": str(item.id), "text": pred,
                         "value": float(pred == item.answer), "extra": json.dumps([round(float(x), 5) for x in lp])})
    return pa.Table.from_pylist(rows, schema=DETAIL_SCHEMA)


def _measure_vllm(
    engine: Any, conditions: Sequence[tuple[str, CappingExperiment | None]], jailbreaks: Sequence[Jailbreak],
    ppl: Sequence[dict[str, Any]], mc: Sequence[MCItem], mc_scoring: str, settings: SamplingSettings,
) -> dict[str, pa.Table]:
    """Every condition at once on one vLLM engine: each request carries its condition's caps.

    The same detail rows as :func:`_measure`; the jailbreak replies of all conditions are generated
    in one engine call, then the perplexity and multiple-choice passes of all conditions are scored
    in one more, so the engine stays busy and starts once.
    """
    from ..vllm_backend import Batch

    names = {c: None if exp is None else engine.define_experiment(exp) for c, exp in conditions}
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c, _ in conditions}
    batches, owners = [], []
    for condition, exp in conditions:
        kinds = [("jailbreak", True)] + ([(NO_PERSONA, False)] if exp is None else [])
        for kind, with_persona in kinds:
            batches.append(Batch([j.conversation(with_persona) for j in jailbreaks], settings, names[condition]))
            owners.append((condition, kind))
    t0 = time.monotonic()
    for b, replies in engine.generate_batches(batches):
        condition, kind = owners[b]
        rows[condition] += [
            {"condition": condition, "kind": kind, "item": str(j.id), "text": g.text, "n_tokens": g.n_tokens}
            for j, g in zip(jailbreaks, replies, strict=True)
        ]
    log.info("capping eval: %d replies under %d conditions in %.1f s (one vLLM call)",
             len(batches) * len(jailbreaks), len(conditions), time.monotonic() - t0)
    for condition, exp in conditions:
        if exp is None:
            continue
        # telemetry of the jailbreak generation only: how often the floor acted while answering
        summary = engine.telemetry(names[condition])
        seen = sum(int(t["tokens"]) for t in summary.values())
        capped = sum(int(t["capped"]) for t in summary.values())
        rows[condition].append({"condition": condition, "kind": "telemetry", "item": "generation", "text": json.dumps(summary),
                                "n_tokens": seen, "value": capped / seen if seen else 0.0})
    t0 = time.monotonic()
    each = [names[c] for c, _ in conditions]
    samples = [(r["system_prompt"], r["question"], r["response"]) for r in ppl]
    nll = response_nll(engine, engine.tokenizer, samples * len(conditions), intervention=[n for n in each for _ in samples])
    logp = mc_scores(engine, engine.tokenizer, list(mc) * len(conditions), mc_scoring, intervention=[n for n in each for _ in mc])
    for k, (condition, _) in enumerate(conditions):
        part = nll[k * len(ppl) : (k + 1) * len(ppl)]
        rows[condition] += [
            {"condition": condition, "kind": "perplexity", "item": r["key"], "n_tokens": n, "value": s}
            for r, (s, n) in zip(ppl, part, strict=True)
        ]
        scores = logp[k * len(mc) : (k + 1) * len(mc)]
        for item, pred, lp in zip(mc, mc_predictions(scores), scores, strict=True):
            rows[condition].append({"condition": condition, "kind": "mc", "item": str(item.id), "text": pred,
                                    "value": float(pred == item.answer), "extra": json.dumps([round(float(x), 5) for x in lp])})
    log.info("capping eval: perplexity and MC of %d conditions scored in %.1f s", len(conditions), time.monotonic() - t0)
    return {c: pa.Table.from_pylist(r, schema=DETAIL_SCHEMA) for c, r in rows.items()}


def _condition_metrics(condition: str, frame: pd.DataFrame, harm_threshold: int) -> dict[str, Any]:
    """Harm and capability numbers of one condition from its detail rows (harm rows already scored)."""
    jail = frame[frame["kind"] == ("jailbreak" if condition != NO_PERSONA else NO_PERSONA)]
    scores = jail["harm_score"].dropna().astype(float)
    row: dict[str, Any] = {"experiment": condition, "window": "", "percentile": np.nan}
    if condition not in (UNSTEERED, NO_PERSONA):
        start, stop, p = parse_experiment_id(condition)
        row.update(window=f"{start}:{stop}", percentile=p)
    row.update(
        n_items=len(jail), judged=len(scores), missing=int(len(jail) - len(scores)),
        harm_rate=float((scores >= harm_threshold).mean()) if len(scores) else np.nan,
        mean_harm=float(scores.mean()) if len(scores) else np.nan,
        refusal_rate=float((scores == 0).mean()) if len(scores) else np.nan,
        reply_tokens=float(jail["n_tokens"].mean()),
    )
    if condition == NO_PERSONA:
        return {**row, "perplexity": np.nan, "nll_per_token": np.nan, "mc_accuracy": np.nan, "capped_share": np.nan}
    ppl = frame[frame["kind"] == "perplexity"]
    nll = list(zip(ppl["value"], ppl["n_tokens"], strict=True))
    tel = frame[frame["kind"] == "telemetry"]
    row.update(
        perplexity=perplexity(nll), nll_per_token=float(ppl["value"].sum() / ppl["n_tokens"].sum()),
        mc_accuracy=float(frame.loc[frame["kind"] == "mc", "value"].mean()),
        capped_share=float(tel["value"].iloc[0]) if len(tel) else 0.0,
    )
    return row


def measure_conditions(
    *, capping_config: str, responses: Sequence[str], jailbreaks_file: str, harm_rubric_file: str, mc_file: str,
    model_json: str, dtype: str, device: str, percentiles: Sequence[float] | None, n_jailbreaks: int | None,
    n_mc: int | None, mc_scoring: str, n_perplexity: int | None, generation: dict[str, Any], batch_size: int, judge: dict[str, Any],
    judge_cache: str, harm_threshold: int, cache_dir: str, details_out: str, metrics_out: str, backend: str = "hf",
    vllm_options: dict[str, Any] | None = None, n_bootstrap: int = 1000, confidence: float = 0.95, bootstrap_seed: int = 0,
) -> pd.DataFrame:
    """Every condition's replies, harm scores, perplexity and MC accuracy; details Parquet + metrics CSV.

    ``backend``: ``hf`` measures one condition after another under HF hooks; ``vllm`` (``auto``
    where vLLM is installed) measures every unfinished condition together on one engine.
    """
    backend = resolve_backend(backend)
    facts = read_model_json(model_json)
    config = CappingConfig.load(capping_config)
    experiments = select_experiments(config, percentiles)
    jailbreaks = load_jailbreaks(jailbreaks_file)[:n_jailbreaks]
    rubric = load_rubric(harm_rubric_file)
    mc = load_mc(mc_file)[:n_mc]
    ppl = default_samples(responses, n_perplexity)
    settings = SamplingSettings(**generation)
    conditions: list[tuple[str, CappingExperiment | None]] = [(UNSTEERED, None), *((e.id, e) for e in experiments)]
    log.info(
        "capping eval: %d conditions x (%d jailbreaks, %d default responses, %d MC items), %d new tokens, %s backend",
        len(conditions), len(jailbreaks), len(ppl), len(mc), settings.max_new_tokens, backend,
    )
    common = {
        "model": facts["spec"], "backend": backend, "dtype": dtype, "device": device, "generation": generation, "batch": batch_size,
        "jailbreaks": [(j.id, j.persona, j.request) for j in jailbreaks],
        "ppl": [(r["key"], hashlib.sha256(r["response"].encode()).hexdigest()[:16]) for r in ppl],
        "mc": [(m.id, m.question, m.options, m.answer) for m in mc], "mc_scoring": mc_scoring,
    }
    by_id = dict(conditions)
    fingerprints = {c: fingerprint({**common, "caps": _experiment_fp(exp)}) for c, exp in conditions}
    loaded: tuple[Any, Any] | None = None

    def compute(group: Sequence[str]) -> dict[str, pa.Table]:
        nonlocal loaded
        if loaded is None:
            from ..models import load_model

            loaded = load_model(facts["path"], dtype=dtype, device=device)
        out = {}
        for condition in group:
            t0 = time.monotonic()
            out[condition] = _measure(*loaded, condition, by_id[condition], jailbreaks, ppl, mc, mc_scoring, settings, batch_size)
            log.info("capping eval: condition %s measured in %.1f s", condition, time.monotonic() - t0)
        return out

    def compute_all(todo: list[Sequence[str]]) -> Iterator[dict[str, pa.Table]]:
        from ..vllm_backend import VLLMEngine

        engine = VLLMEngine(facts["path"], dtype=dtype, hooks=True, **(vllm_options or {}))
        try:
            yield _measure_vllm(engine, [(c, by_id[c]) for group in todo for c in group], jailbreaks, ppl, mc, mc_scoring, settings)
        finally:
            engine.close()

    cache = UnitCache(cache_dir)
    groups = [[c] for c, _ in conditions]
    if backend == "vllm":
        cached = resume(cache, groups, fingerprints, None, "evaluate_capping", compute_all=compute_all)
    else:
        cached = resume(cache, groups, fingerprints, compute, "evaluate_capping")
    tables = [cached[c] for c, _ in conditions]
    frame = pa.concat_tables(tables).to_pandas()
    harm_rows = frame[frame["kind"].isin(["jailbreak", NO_PERSONA])]
    request_of = {str(j.id): j.request for j in jailbreaks}
    keys = [f"{c}/{k}/{i}" for c, k, i in zip(harm_rows["condition"], harm_rows["kind"], harm_rows["item"], strict=True)]
    items = harm_items(rubric, keys, [request_of[i] for i in harm_rows["item"]], list(harm_rows["text"]))
    verdicts = {v.key: v for v in make_judge(judge, judge_cache).judge(items)}
    frame["harm_score"] = pd.array([None] * len(frame), dtype="Int8")
    frame["harm_raw"] = None
    frame.loc[harm_rows.index, "harm_score"] = pd.array([verdicts[k].score for k in keys], dtype="Int8")
    frame.loc[harm_rows.index, "harm_raw"] = [verdicts[k].raw for k in keys]
    metrics = pd.DataFrame(
        [_condition_metrics(c, frame[frame["condition"] == c], harm_threshold) for c, _ in conditions]
        + [_condition_metrics(NO_PERSONA, frame[(frame["condition"] == UNSTEERED)], harm_threshold)]
    )
    metrics = add_intervals(metrics, frame, harm_threshold, n_bootstrap, confidence, bootstrap_seed)
    write_parquet(Path(details_out), frame)
    write_text(metrics_out, metrics.to_csv(index=False))
    u = metrics.iloc[0]
    log.info("capping eval: unsteered harmful share %.3f (no persona %.3f), perplexity %.2f, MC accuracy %.3f",
             u["harm_rate"], metrics.iloc[-1]["harm_rate"], u["perplexity"], u["mc_accuracy"])
    return metrics


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row for JSON: NaN (no value, e.g. the unsteered window) becomes null, numpy scalars plain."""
    return {k: None if isinstance(v, float) and math.isnan(v) else (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def recommend_capping(
    *, metrics: str, capping_config: str, max_perplexity_increase: float, max_mc_drop: float, harm_threshold: int,
    model: str, pareto_out: str, plot_out: str, recommended_out: str, config_out: str, reference_out: str,
) -> str | None:
    """Pareto table, plot and recommendation; a copy of the capping config with ``recommended`` set."""
    from ..plots import capping_pareto_plot

    table = pd.read_csv(metrics)
    for column in ("experiment", "harm_rate", "mean_harm", "perplexity", "mc_accuracy"):
        if column not in table.columns:
            raise ValueError(f"{metrics}: column {column!r} is missing (written by the evaluate_capping stage)")
    rows = table[table["experiment"] != NO_PERSONA].to_dict("records")
    unsteered = next((r for r in rows if r["experiment"] == UNSTEERED), None)
    if unsteered is None or any(pd.isna(unsteered[c]) for c in ("harm_rate", "perplexity", "mc_accuracy")):
        raise ValueError(f"{metrics}: the 'unsteered' row is missing or has no harm/perplexity/MC values")
    bounds = Bounds(max_perplexity_increase, max_mc_drop)
    out, best, reason = pareto_table(rows, bounds)
    no_persona = table[table["experiment"] == NO_PERSONA]
    no_persona_rate = float(no_persona["harm_rate"].iloc[0]) if len(no_persona) else None
    beyond, noise = noise_statement(out, unsteered, no_persona.to_dict("records")[0] if len(no_persona) else None, best)
    write_text(pareto_out, pd.DataFrame(out).to_csv(index=False))
    capping_pareto_plot(
        out, plot_out, None if no_persona_rate is None else no_persona_rate - unsteered["harm_rate"],
        (max_perplexity_increase, max_mc_drop), title=f"{model}: capping, harm against capability",
    )
    log.info("capping recommendation: %s (%s); %s", best, reason, noise)
    config = CappingConfig.load(capping_config)
    config.recommended = best
    config.metadata = {**config.metadata, "recommendation": {"rule": RULE, "reason": reason, "bounds": vars(bounds)}}
    config.save(config_out)
    config.save_reference(reference_out)
    chosen = next((r for r in out if r["recommended"]), None)
    write_json(
        recommended_out,
        {
            "recommended": best, "reason": reason, "rule": RULE,
            "first_token": "cap" if config.cap_first_token else "skip",  # the policy every condition was measured with
            "bounds": {"max_perplexity_increase": max_perplexity_increase, "max_mc_drop": max_mc_drop},
            "harm_threshold": harm_threshold, "unsteered": _json_row(unsteered), "no_persona_harm_rate": no_persona_rate,
            "metrics": None if chosen is None else _json_row(chosen), "capping_config": config_out,
            "noise": noise, "beyond_noise": beyond,
        },
    )
    return best


def evaluate_capping(
    *, pareto_out: str, plot_out: str, recommended_out: str, config_out: str, reference_out: str,
    max_perplexity_increase: float, max_mc_drop: float, **measure: Any,
) -> str | None:
    """The whole stage: measure every condition, then the Pareto table, plot and recommendation."""
    measure_conditions(**measure)
    facts = read_model_json(measure["model_json"])
    return recommend_capping(
        metrics=measure["metrics_out"], capping_config=measure["capping_config"], max_perplexity_increase=max_perplexity_increase,
        max_mc_drop=max_mc_drop, harm_threshold=measure["harm_threshold"], model=facts["spec"], pareto_out=pareto_out,
        plot_out=plot_out, recommended_out=recommended_out, config_out=config_out, reference_out=reference_out,
    )


# ---- uncertainty: bootstrap intervals of every compared number ------------------------------------


def add_intervals(
    metrics: pd.DataFrame, frame: pd.DataFrame, harm_threshold: int, n_bootstrap: int, confidence: float, seed: int
) -> pd.DataFrame:
    """``metrics`` with a bootstrap interval (``<column>_lo``/``_hi``) for the harmful share, MC accuracy
    and perplexity of every condition, and for their changes against the unsteered model.

    Items are resampled (:func:`assistant_axis.uncertainty.bootstrap`): jailbreaks for harm, MC
    questions for accuracy, default responses for perplexity (pooled ``exp(sum NLL / sum tokens)``).
    A change is a *paired* bootstrap over the items both conditions answered, so it measures the
    noise of the difference, not of two independent rates. ``ci_level`` records ``confidence``.
    """
    from ..uncertainty import bootstrap, nanmean

    def per_item(condition: str, kind: str) -> pd.DataFrame:
        source = UNSTEERED if condition == NO_PERSONA else condition
        rows = frame[(frame["condition"] == source) & (frame["kind"] == kind)]
        return rows.set_index("item")

    def harmful(rows: pd.DataFrame) -> np.ndarray:
        scores = rows["harm_score"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        return np.where(np.isnan(scores), np.nan, (scores >= harm_threshold).astype(float))

    def ppl(nll: np.ndarray, tokens: np.ndarray) -> float:
        return float(np.exp(nll.sum() / tokens.sum())) if tokens.sum() else float("nan")

    kw: dict[str, Any] = {"n_boot": n_bootstrap, "confidence": confidence, "seed": seed}
    base_jail, base_mc, base_ppl = per_item(UNSTEERED, "jailbreak"), per_item(UNSTEERED, "mc"), per_item(UNSTEERED, "perplexity")
    extra = []
    for condition in metrics["experiment"]:
        row: dict[str, float] = {}
        jail = per_item(condition, NO_PERSONA if condition == NO_PERSONA else "jailbreak")
        h = harmful(jail)
        iv = bootstrap([h], nanmean, **kw)
        row.update({"harm_rate_lo": iv.low, "harm_rate_hi": iv.high})
        if condition != UNSTEERED:
            common = jail.index.intersection(base_jail.index)
            iv = bootstrap([harmful(jail.loc[common]), harmful(base_jail.loc[common])], lambda a, b: nanmean(a) - nanmean(b), **kw)
            row.update({"harm_change_lo": iv.low, "harm_change_hi": iv.high})
        if condition != NO_PERSONA:
            mc = per_item(condition, "mc")
            iv = bootstrap([mc["value"].to_numpy(float)], np.mean, **kw)
            row.update({"mc_accuracy_lo": iv.low, "mc_accuracy_hi": iv.high})
            pp = per_item(condition, "perplexity")
            iv = bootstrap([pp["value"].to_numpy(float), pp["n_tokens"].to_numpy(float)], ppl, **kw)
            row.update({"perplexity_lo": iv.low, "perplexity_hi": iv.high})
            if condition != UNSTEERED:
                common = mc.index.intersection(base_mc.index)
                iv = bootstrap([mc.loc[common, "value"].to_numpy(float), base_mc.loc[common, "value"].to_numpy(float)],
                               lambda a, b: float(np.mean(a) - np.mean(b)), **kw)
                row.update({"mc_change_lo": iv.low, "mc_change_hi": iv.high})
                common = pp.index.intersection(base_ppl.index)
                arrays = [pp.loc[common, "value"].to_numpy(float), pp.loc[common, "n_tokens"].to_numpy(float),
                          base_ppl.loc[common, "value"].to_numpy(float), base_ppl.loc[common, "n_tokens"].to_numpy(float)]
                iv = bootstrap(arrays, lambda a, b, c, d: ppl(a, b) / ppl(c, d) - 1.0, **kw)
                row.update({"perplexity_change_lo": iv.low, "perplexity_change_hi": iv.high})
        extra.append(row)
    columns = ["harm_rate_lo", "harm_rate_hi", "harm_change_lo", "harm_change_hi", "mc_accuracy_lo", "mc_accuracy_hi",
               "mc_change_lo", "mc_change_hi", "perplexity_lo", "perplexity_hi", "perplexity_change_lo", "perplexity_change_hi"]
    out = pd.concat([metrics.reset_index(drop=True), pd.DataFrame(extra, columns=columns)], axis=1)
    out["ci_level"] = confidence
    return out


def noise_statement(
    rows: Sequence[dict[str, Any]], unsteered: dict[str, Any], no_persona: dict[str, Any] | None, best: str | None
) -> tuple[list[str], str]:
    """``(experiments whose harm change is beyond noise, one sentence saying so)`` from the Pareto rows.

    "Beyond noise" = the bootstrap interval of the harmful-share change excludes 0. Rows written
    before intervals existed (no ``harm_change_lo`` column) give an empty list and say so.
    """
    from ..uncertainty import Interval

    def interval(row: dict[str, Any], name: str) -> Interval:
        return Interval(float(row.get(name, np.nan)), float(row.get(f"{name}_lo", np.nan)), float(row.get(f"{name}_hi", np.nan)))

    level = unsteered.get("ci_level")
    if level is None or pd.isna(level):
        return [], "no confidence intervals in the metrics (rerun evaluate_capping to compute them)"
    pct = f"{100 * float(level):g}%"
    base = interval(unsteered, "harm_rate")
    n = int(unsteered.get("judged", unsteered.get("n_items", 0)) or 0)
    head = f"unsteered harmful share {base.estimate:.2f} [{base.low:.2f}, {base.high:.2f}] on {n} judged jailbreaks ({pct} bootstrap intervals)"
    beyond = [r["experiment"] for r in rows if interval(r, "harm_change").excludes(0.0)]
    if not beyond:
        text = f"{head}; no experiment's harmful share differs from unsteered beyond noise: the paired interval of every change includes 0"
    else:
        parts = [f"{r['experiment']} {100 * r['harm_change']:+.0f} points [{100 * r['harm_change_lo']:+.0f}, {100 * r['harm_change_hi']:+.0f}]"
                 for r in rows if r["experiment"] in beyond]
        text = f"{head}; {len(beyond)} of {len(rows)} experiments differ from unsteered beyond noise: " + ", ".join(parts)
        if best is not None and best not in beyond:
            text += f"; the recommended {best}'s reduction is within noise"
    if no_persona is not None and np.isfinite(float(no_persona.get("harm_rate", np.nan))):
        npi = interval(no_persona, "harm_rate")
        differs = interval(no_persona, "harm_change").excludes(0.0)
        text += (f"; without the persona prompt {npi.estimate:.2f} [{npi.low:.2f}, {npi.high:.2f}], "
                 f"{'beyond' if differs else 'within'} noise of unsteered")
    return beyond, text
