"""Stage ``drift_analysis``: can the user's last message predict where the next reply lands on the axis?
And how much does each domain drift, with its noise?

**Prediction** (the paper: ridge regression from an embedding of the latest user message predicts
the next turn's projection with R^2 0.53-0.77, while the *change* from the previous turn is barely
predictable, R^2 about 0.10). For every assistant turn of the drift stage's conversations:

* ``x``: the embedding of the user message that turn answers: the mean, over the message's content
  tokens, of a block's output when the message is fed alone as one user turn. The embedding model
  is ``drift_analysis.embedding_model`` (``own`` = the run's model, so it works offline; or any
  model spec) at ``embedding_layer`` (null = the run's target layer for its own model, else that
  model's default target layer);
* targets: ``projection`` (the turn's projection on the axis, from ``drift.csv``) and ``change``
  (the projection minus the previous turn's; turns 2 on);
* model: standardised features, then scikit-learn ``RidgeCV`` (``alphas`` chosen by efficient
  leave-one-out inside each training fold); evaluation: out-of-fold predictions of a
  ``GroupKFold`` over conversations (no conversation is in both the training and the test fold),
  ``folds`` at most, and R^2 = 1 - SSE / SST of those predictions around the mean of the target;
* interval: bootstrap over conversations of that R^2 (:mod:`assistant_axis.uncertainty`).

**Per-domain drift**: per conversation, the last turn's projection minus the first; per domain the
mean over its conversations with a bootstrap interval over conversations (none with one
conversation: a single conversation cannot show its own noise), and the mean projection.

Outputs: ``drift_prediction.csv`` (R^2 per target beside the paper's), ``predictions.csv`` (every
sample: actual, predicted, fold), ``drift_prediction.png``, ``domain_drift.csv`` and ``domain_drift.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import mean_activations_for_spans
from ..conversation import encode_conversation
from ..plots import domain_drift_plot, drift_prediction_plot
from ..storage import write_text
from ..uncertainty import bootstrap
from .model import read_model_json

log = logging.getLogger(__name__)

OWN_MODEL = "own"
PAPER_R2 = {"projection": "0.53-0.77", "change": "about 0.10"}
TARGETS = ("projection", "change")


def turn_samples(drift_csv: str, transcripts_json: str) -> pd.DataFrame:
    """One row per assistant turn: conversation, domain, turn, projection, change, and the user message it answers."""
    table = pd.read_csv(drift_csv)
    for col in ("domain", "conversation_id", "turn", "message_index", "projection"):
        if col not in table.columns:
            raise ValueError(f"{drift_csv}: column {col!r} is missing (written by the drift stage; rerun it)")
    convs = {}
    for i, entry in enumerate(json.loads(Path(transcripts_json).read_text())):
        if "conversation_id" not in entry or "conversation" not in entry:
            raise ValueError(f"{transcripts_json}: entry {i} lacks field 'conversation_id' or 'conversation' (rerun the drift stage)")
        convs[entry["conversation_id"]] = entry["conversation"]
    users = []
    for conv_id, index in zip(table["conversation_id"], table["message_index"], strict=True):
        if conv_id not in convs:
            raise ValueError(f"{transcripts_json}: no conversation {conv_id!r}, which {drift_csv} names")
        messages = convs[conv_id]
        prev = messages[int(index) - 1] if int(index) >= 1 else None
        if prev is None or prev["role"] != "user":
            raise ValueError(f"{transcripts_json}: conversation {conv_id}: message {index} is not preceded by a user message")
        users.append(prev["content"])
    table["user_message"] = users
    table = table.sort_values(["conversation_id", "turn"], kind="stable").reset_index(drop=True)
    table["change"] = table.groupby("conversation_id")["projection"].diff()
    return table[["domain", "conversation_id", "turn", "projection", "change", "user_message"]]


def embed_messages(texts: Sequence[str], model_spec: str, layer: int | None, dtype: str, device: str) -> tuple[np.ndarray, int]:
    """``(n, hidden)`` mean activation of each text as a lone user turn at ``layer`` (None: the model's target layer)."""
    from ..models import describe_model, load_model

    if layer is None:
        layer = describe_model(model_spec).target_layer
    model, tok = load_model(model_spec, dtype=dtype, device=device)
    samples = []
    for text in texts:
        enc = encode_conversation(tok, [{"role": "user", "content": text}])
        samples.append((enc.input_ids, enc.span_of_last("user")))
    acts = mean_activations_for_spans(model, samples, [layer], 32, 16384, tok.pad_token_id or 0, progress=False)
    return acts[:, 0].double().numpy(), int(layer)


def fold_assignment(groups: Sequence[str], folds: int) -> tuple[np.ndarray, int]:
    """Fold of each sample under scikit-learn's ``GroupKFold`` with ``min(folds, groups)`` splits."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups))
    k = min(folds, n_groups)
    out = np.full(len(groups), -1, dtype=int)
    if k < 2:
        return out, k
    for f, (_, test) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)):
        out[test] = f
    return out, k


def out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """Predictions of each fold's samples by a model trained on the other folds, and each fold's chosen alpha."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.full(len(y), np.nan)
    chosen = []
    for f in sorted(set(fold.tolist()) - {-1}):
        train, test = fold != f, fold == f
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
        model.fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        chosen.append(float(model[-1].alpha_))
    return pred, chosen


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """``1 - SSE / SST`` around the mean of ``y`` (NaN with fewer than two samples or no variance)."""
    if len(y) < 2 or float(np.var(y)) == 0:
        return float("nan")
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def domain_drift(samples: pd.DataFrame, n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
    """Per domain: conversations, mean first/last projection, drift (last - first) and mean projection, with intervals."""
    rows = []
    for domain, sub in samples.groupby("domain", sort=False):
        per_conv = sub.sort_values("turn").groupby("conversation_id", sort=True)["projection"]
        first, last, mean = per_conv.first().to_numpy(), per_conv.last().to_numpy(), per_conv.mean().to_numpy()
        drift = bootstrap([last - first], np.mean, n_boot, confidence, seed)
        level = bootstrap([mean], np.mean, n_boot, confidence, seed)
        rows.append({"domain": domain, "n_conversations": len(first), "turns": int(sub["turn"].max()),
                     "first_turn": float(first.mean()), "last_turn": float(last.mean()),
                     **drift.as_dict("drift"), **level.as_dict("mean_projection")})
    return pd.DataFrame(rows)


def drift_analysis(
    *, drift_csv: str, transcripts: str, model_json: str, embedding_model: str, embedding_layer: int | None, dtype: str,
    device: str, alphas: Sequence[float], folds: int, n_bootstrap: int, confidence: float, seed: int, target_layer: int,
    prediction_out: str, predictions_out: str, prediction_plot: str, domains_out: str, domains_plot: str, title: str = "",
) -> pd.DataFrame:
    """The whole stage (see the module docstring); returns the R^2 table."""
    samples = turn_samples(drift_csv, transcripts)
    facts = read_model_json(model_json)
    spec = facts["path"] if embedding_model == OWN_MODEL else embedding_model
    layer = embedding_layer
    if embedding_model == OWN_MODEL and layer is None:
        layer = target_layer  # the run's own model: its analysed layer
    with torch.no_grad():
        x, layer = embed_messages(samples["user_message"].tolist(), spec, layer, dtype, device)
    name = facts["spec"] if embedding_model == OWN_MODEL else embedding_model
    log.info("drift analysis: %d turns of %d conversations, embeddings from %s layer %d (%d dims)",
             len(samples), samples["conversation_id"].nunique(), name, layer, x.shape[1])
    results, preds = [], []
    for target in TARGETS:
        have = samples[target].notna().to_numpy()
        sub, xs = samples[have].reset_index(drop=True), x[have]
        y = sub[target].to_numpy(dtype=float)
        fold, k = fold_assignment(sub["conversation_id"].tolist(), folds)
        row: dict[str, Any] = {"target": target, "n_samples": len(y), "n_conversations": sub["conversation_id"].nunique(),
                               "folds": k, "embedding": f"{name} layer {layer}", "paper_r2": PAPER_R2[target]}
        if k < 2:
            log.warning("drift analysis: %s needs turns of at least two conversations for cross-validation; no R^2", target)
            results.append({**row, "r2": np.nan, "r2_lo": np.nan, "r2_hi": np.nan, "alpha_median": np.nan})
            continue
        pred, chosen = out_of_fold(xs, y, fold, alphas)
        conv_ids = sub["conversation_id"].to_numpy()
        convs = np.unique(conv_ids)
        rows_of = {c: np.flatnonzero(conv_ids == c) for c in convs}

        def r2_of(picked: np.ndarray, y: np.ndarray = y, pred: np.ndarray = pred, convs: np.ndarray = convs, rows_of: dict = rows_of) -> float:
            rows = np.concatenate([rows_of[convs[int(i)]] for i in picked])
            return r2(y[rows], pred[rows])

        interval = bootstrap([np.arange(len(convs))], r2_of, n_bootstrap, confidence, seed)
        results.append({**row, **interval.as_dict("r2"), "alpha_median": float(np.median(chosen))})
        preds.append(pd.DataFrame({"target": target, "domain": sub["domain"], "conversation_id": sub["conversation_id"], "turn": sub["turn"],
                                   "actual": y, "predicted": pred, "fold": fold}))
    table = pd.DataFrame(results)
    write_text(prediction_out, table.to_csv(index=False, float_format="%.6f"))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(
        columns=["target", "domain", "conversation_id", "turn", "actual", "predicted", "fold"])
    write_text(predictions_out, predictions.to_csv(index=False, float_format="%.6f"))
    head = f"{title + ': ' if title else ''}"
    drift_prediction_plot(predictions, table, prediction_plot, target_layer,
                          title=f"{head}next-turn projection predicted from the user's message ({name} layer {layer})")
    domains = domain_drift(samples, n_bootstrap, confidence, seed)
    write_text(domains_out, domains.to_csv(index=False, float_format="%.6f"))
    domain_drift_plot(domains, domains_plot, target_layer, confidence, title=f"{head}drift per domain (last turn - first turn)")
    for r in results:
        log.info("drift analysis: %s R^2 %.3f [%.3f, %.3f] over %d turns (paper %s)", r["target"], r["r2"], r["r2_lo"], r["r2_hi"],
                 r["n_samples"], r["paper_r2"])
    return table
