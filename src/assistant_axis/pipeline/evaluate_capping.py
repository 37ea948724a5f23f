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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..capping import CappingConfig, CappingExperiment, load_capping_config, parse_experiment_id
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
    judge_cache: str, harm_threshold: int, cache_dir: str, details_out: str, metrics_out: str,
) -> pd.DataFrame:
    """Every condition's replies, harm scores, perplexity and MC accuracy; details Parquet + metrics CSV."""
    facts = read_model_json(model_json)
    config = load_capping_config(capping_config)
    experiments = select_experiments(config, percentiles)
    jailbreaks = load_jailbreaks(jailbreaks_file)[:n_jailbreaks]
    rubric = load_rubric(harm_rubric_file)
    mc = load_mc(mc_file)[:n_mc]
    ppl = default_samples(responses, n_perplexity)
    settings = SamplingSettings(**generation)
    conditions: list[tuple[str, CappingExperiment | None]] = [(UNSTEERED, None), *((e.id, e) for e in experiments)]
    log.info(
        "capping eval: %d conditions x (%d jailbreaks, %d default responses, %d MC items), %d new tokens",
        len(conditions), len(jailbreaks), len(ppl), len(mc), settings.max_new_tokens,
    )
    common = {
        "model": facts["spec"], "dtype": dtype, "device": device, "generation": generation, "batch": batch_size,
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

    cached = resume(UnitCache(cache_dir), [[c] for c, _ in conditions], fingerprints, compute, "evaluate_capping")
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
    write_text(pareto_out, pd.DataFrame(out).to_csv(index=False))
    capping_pareto_plot(
        out, plot_out, None if no_persona_rate is None else no_persona_rate - unsteered["harm_rate"],
        (max_perplexity_increase, max_mc_drop), title=f"{model}: capping, harm against capability",
    )
    log.info("capping recommendation: %s (%s)", best, reason)
    config = load_capping_config(capping_config)
    config.recommended = best
    config.metadata = {**config.metadata, "recommendation": {"rule": RULE, "reason": reason, "bounds": vars(bounds)}}
    config.save(config_out)
    config.save_reference(reference_out)
    chosen = next((r for r in out if r["recommended"]), None)
    write_json(
        recommended_out,
        {
            "recommended": best, "reason": reason, "rule": RULE,
            "bounds": {"max_perplexity_increase": max_perplexity_increase, "max_mc_drop": max_mc_drop},
            "harm_threshold": harm_threshold, "unsteered": _json_row(unsteered), "no_persona_harm_rate": no_persona_rate,
            "metrics": None if chosen is None else _json_row(chosen), "capping_config": config_out,
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
