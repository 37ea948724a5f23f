"""The analysis stages end to end on one tiny two-run config, each number recomputed independently.

The session's shared run (tests/conftest.py `shared_run`): the tiny config plus a tiny random Llama 3 as a second model,
with trait vectors, interpretation, drift analysis, stability and the cross-model comparison on; every test reads its outputs and
recomputes a number with plain numpy/torch (forward passes through ``output_hidden_states``, SVD
for the PCA, closed-form ridge with leave-one-out for RidgeCV, the documented bootstrap draws).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from pipeline_helpers import CONF, N_BOOT, SEED, TRAITS, copy_run, snakemake, tiny_config, write_config
from safetensors.torch import load_file

from assistant_axis.axis import load_axis
from assistant_axis.conversation import build_conversation, format_conversation
from assistant_axis.judges.trait_rules import score_trait_prompt
from assistant_axis.traits import load_traits

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TARGET = 15


@pytest.fixture(scope="module")
def run(shared_run: Path) -> Path:
    """The shared finished run (tests/conftest.py): read only; tests that rerun a stage copy it."""
    return shared_run


def _draws(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n, size=(N_BOOT, n))


def _interval(values: list[float]) -> tuple[float, float]:
    v = np.array(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = np.quantile(v, [(1 - CONF) / 2, (1 + CONF) / 2])
    return float(lo), float(hi)


def _reply_mean(model: Any, tok: Any, system: str, question: str, reply: str, layers: list[int]) -> torch.Tensor:
    """Mean hidden state over exactly the reply's tokens (the prompt as rendered for generation, then the reply)."""
    prompt = format_conversation(tok, build_conversation(system, question))
    enc = tok(prompt + reply, add_special_tokens=False, return_offsets_mapping=True)
    idx = [i for i, (start, _) in enumerate(enc["offset_mapping"]) if start >= len(prompt)]
    with torch.no_grad():
        hidden = model(torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states
    return torch.stack([hidden[layer + 1][0, idx].mean(0) for layer in layers])


# ---- trait vectors ----------------------------------------------------------------------------------


def test_trait_vectors_are_the_mean_of_kept_pos_minus_kept_neg(run, fp32_model):
    res = run / "results" / "tiny" / "trait_vectors"
    traits = load_traits(REPO / "resources" / "traits", TRAITS)
    replies = pd.read_parquet(res / "trait_responses.parquet")
    assert len(replies) == len(TRAITS) * 1 * 2 * 2 and set(replies["side"]) == {"pos", "neg"}
    # scores: the offline trait rules on the trait's own eval prompt; kept: the two thresholds
    for row in replies.itertuples():
        score, _ = score_trait_prompt(traits[row.trait].judge_prompt(row.question, row.response))
        assert (None if pd.isna(row.score) else int(row.score)) == score
        want = row.response.strip() != "" and score is not None and (score >= 0 if row.side == "pos" else score <= 50)
        assert bool(row.kept) == want
        assert row.system_prompt == traits[row.trait].instruction(row.side, row.pair)
    vectors = load_file(str(res / "trait_vectors.safetensors"))
    counts = pd.read_csv(res / "trait_counts.csv").set_index("trait")
    assert set(vectors) == set(counts.index[counts["vector"]])
    model, tok = fp32_model
    layers = [0, TARGET, 28]  # not 29: HF's last hidden state has the final norm applied, a block output does not
    name = sorted(vectors)[0]
    means = {}
    for side in ("pos", "neg"):
        part = replies[(replies["trait"] == name) & (replies["side"] == side) & replies["kept"]]
        assert len(part) == counts.loc[name, f"{side}_kept"] > 0
        means[side] = torch.stack([_reply_mean(model, tok, r.system_prompt, r.question, r.response, layers) for r in part.itertuples()]).mean(0)
    torch.testing.assert_close(vectors[name][layers], means["pos"] - means["neg"], rtol=1e-4, atol=1e-4)
    assert vectors[name].shape == (30, 576)
    assert (res / "trait_scores.png").stat().st_size > 10_000


def test_trait_stage_resumes_from_its_cache(run, tmp_path):
    work = copy_run(run, tmp_path / "w")
    proc = snakemake(work, "--forcerun", "trait_vectors", "--until", "trait_vectors")
    log = (work / "results" / "tiny" / "logs" / "trait_vectors.log").read_text()
    assert "(generate): 4 units in 2 groups, 2 groups cached, 0 to do" in log
    assert "groups cached, 0 to do" in log.split("(extract)")[-1]
    assert "trait_vectors" in proc.stderr


# ---- interpretation ----------------------------------------------------------------------------------


def test_alignment_with_axis_and_pcs_matches_an_svd(run):
    res = run / "results" / "tiny"
    roles = load_file(str(res / "role_vectors" / "role_vectors.safetensors"))
    roles.pop("default")
    names = sorted(roles, key=list(roles).index)
    x = torch.stack([roles[n][TARGET] for n in names]).double().numpy()
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = load_axis(res / "axis" / "axis.safetensors")[TARGET].double().numpy()
    comps = np.array([v if v @ axis >= 0 else -v for v in vt[:3]])
    traits = load_file(str(res / "trait_vectors" / "trait_vectors.safetensors"))
    table = pd.read_csv(res / "interpret" / "trait_alignment.csv").set_index("trait")
    assert set(table.index) == set(traits)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    for name, vec in traits.items():
        t = vec[TARGET].double().numpy()
        assert table.loc[name, "cos_axis"] == pytest.approx(cos(t, axis), abs=1e-5)
        for j in range(3):
            assert table.loc[name, f"cos_pc{j + 1}"] == pytest.approx(cos(t, comps[j]), abs=1e-5)
    assert list(table["rank_axis"]) == list(range(1, len(table) + 1)) and table["cos_axis"].is_monotonic_decreasing
    ends = pd.read_csv(res / "interpret" / "pc1_ends.csv")
    scores = centred @ comps[0]
    top_roles = ends[(ends["kind"] == "role") & ends["end"].str.startswith("positive")]["name"].tolist()
    assert top_roles == [names[i] for i in np.argsort(-scores, kind="stable")[: len(top_roles)]]
    for plot in ("axis_traits.png", "pc_traits.png", "pc1_ends.png"):
        assert (res / "interpret" / plot).stat().st_size > 10_000


# ---- across models -----------------------------------------------------------------------------------


def test_cross_model_correlations_and_intervals(run):
    data = {}
    for name in ("tiny", "other"):
        ps = json.loads((run / "results" / name / "persona_space" / "persona_space.json").read_text())
        sign = np.sign(next(r["cos_axis_pc1"] for r in ps["per_layer"] if r["layer"] == ps["target_layer"]))
        data[name] = {r: (sign * c[0], p) for r, c, p in zip(ps["roles"], ps["coordinates"], ps["axis_projection"], strict=True)}
    common = [r for r in data["tiny"] if r in data["other"]]
    a = np.array([data["tiny"][r][0] for r in common])
    b = np.array([data["other"][r][0] for r in common])
    pa_, pb = np.array([data["tiny"][r][1] for r in common]), np.array([data["other"][r][1] for r in common])

    def ranks(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(float)

    table = pd.read_csv(run / "results" / "_all" / "compare_models" / "compare_models.csv")
    row = table.iloc[0]
    assert (row["run_a"], row["run_b"], row["n_roles"]) == ("tiny", "other", len(common))
    assert row["pc1_r"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)
    assert row["axis_rho"] == pytest.approx(np.corrcoef(ranks(pa_), ranks(pb))[0, 1], abs=1e-5)
    boot = [np.corrcoef(a[i], b[i])[0, 1] if np.std(a[i]) > 0 and np.std(b[i]) > 0 else np.nan for i in _draws(len(a))]
    assert (row["pc1_r_lo"], row["pc1_r_hi"]) == pytest.approx(_interval(boot), abs=1e-5)
    for plot in ("compare_models.png", "layers.png"):
        assert (run / "results" / "_all" / "compare_models" / plot).stat().st_size > 10_000
    assert (run / "results" / "_all" / "logs" / "compare_models.log").exists()


# ---- drift analysis ----------------------------------------------------------------------------------


def _embedding(model: Any, tok: Any, message: str, layer: int) -> np.ndarray:
    text = tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=False)
    content = message.strip()
    start = text.find(content)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    idx = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > start and s < start + len(content) and e > s]
    with torch.no_grad():
        hidden = model(torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[layer + 1]
    return hidden[0, idx].mean(0).double().numpy()


def _ridge_loo(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, alphas: list[float]) -> np.ndarray:
    """Standardise on the training rows, choose alpha by leave-one-out error (intercept unpenalised), predict."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1
    z = (x - mu) / sd
    zc, yc = z - z.mean(0), y - y.mean()
    n = len(y)
    k = zc @ zc.T
    best = None
    for alpha in alphas:
        inv = np.linalg.inv(k + alpha * np.eye(n))
        hat = k @ inv + 1.0 / n
        loo = (y - (y.mean() + k @ inv @ yc)) / (1 - np.diag(hat))
        err = float(np.mean(loo**2))
        if best is None or err < best[0] - 1e-12:
            best = (err, alpha)
    w = zc.T @ np.linalg.solve(k + best[1] * np.eye(n), yc)
    return ((x_test - mu) / sd - z.mean(0)) @ w + y.mean()


def test_drift_prediction_is_cross_validated_ridge_on_message_embeddings(run, fp32_model):
    res = run / "results" / "tiny"
    drift = pd.read_csv(res / "drift" / "drift.csv")
    convs = {t["conversation_id"]: t["conversation"] for t in json.loads((res / "drift" / "transcripts.json").read_text())}
    model, tok = fp32_model
    drift["x"] = [_embedding(model, tok, convs[c][int(m) - 1]["content"], TARGET)
                  for c, m in zip(drift["conversation_id"], drift["message_index"], strict=True)]
    drift = drift.sort_values(["conversation_id", "turn"]).reset_index(drop=True)
    drift["change"] = drift.groupby("conversation_id")["projection"].diff()
    preds = pd.read_csv(res / "drift_analysis" / "predictions.csv")
    table = pd.read_csv(res / "drift_analysis" / "drift_prediction.csv").set_index("target")
    alphas = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    for target in ("projection", "change"):
        sub = drift[drift[target].notna()].reset_index(drop=True)
        p = preds[preds["target"] == target].reset_index(drop=True)
        assert list(p["conversation_id"]) == list(sub["conversation_id"]) and list(p["turn"]) == list(sub["turn"])
        np.testing.assert_allclose(p["actual"], sub[target], atol=1e-5)
        # no conversation is split across folds
        assert (p.groupby("conversation_id")["fold"].nunique() == 1).all() and p["fold"].nunique() == 2
        x, y = np.stack(sub["x"]), sub[target].to_numpy(float)
        mine = np.zeros(len(y))
        for f in sorted(p["fold"].unique()):
            test = (p["fold"] == f).to_numpy()
            mine[test] = _ridge_loo(x[~test], y[~test], x[test], alphas)
        np.testing.assert_allclose(p["predicted"], mine, rtol=1e-3, atol=1e-3)
        r2 = 1 - np.sum((y - mine) ** 2) / np.sum((y - y.mean()) ** 2)
        assert table.loc[target, "r2"] == pytest.approx(r2, abs=1e-3)
        assert table.loc[target, "folds"] == 2 and table.loc[target, "n_conversations"] == 4
    assert table.loc["projection", "paper_r2"] == "0.53-0.77"
    # per-domain drift: mean over conversations of last turn - first turn, bootstrap over conversations
    domains = pd.read_csv(res / "drift_analysis" / "domain_drift.csv").set_index("domain")
    for domain, sub in drift.groupby("domain"):
        per = sub.sort_values("turn").groupby("conversation_id")["projection"]
        change = (per.last() - per.first()).to_numpy()
        assert domains.loc[domain, "drift"] == pytest.approx(change.mean(), abs=1e-5)
        assert domains.loc[domain, "n_conversations"] == 2
        boot = [change[i].mean() for i in _draws(len(change))]
        assert (domains.loc[domain, "drift_lo"], domains.loc[domain, "drift_hi"]) == pytest.approx(_interval(boot), abs=1e-5)
    for plot in ("drift_prediction.png", "domain_drift.png"):
        assert (res / "drift_analysis" / plot).stat().st_size > 10_000


# ---- stability ---------------------------------------------------------------------------------------


def test_stability_redraws_match_a_numpy_recomputation(run):
    res = run / "results" / "tiny"
    keys, acts = [], []
    for shard in sorted((res / "extract").glob("shard_*.parquet")):
        t = pq.read_table(shard, columns=["key", "role", f"layer_{TARGET:03d}"])
        keys += list(zip(t.column("key").to_pylist(), t.column("role").to_pylist(), strict=True))
        acts.append(np.stack(t.column(f"layer_{TARGET:03d}").to_numpy(zero_copy_only=False)).astype(np.float64))
    x = np.concatenate(acts)
    scores = pd.concat(pd.read_parquet(p) for p in sorted((res / "judge").glob("shard_*.parquet")))
    score_of = dict(zip(scores["key"], scores["score"], strict=True))
    inrole = np.array([score_of.get(k) == 3 for k, _ in keys])
    role_arr = np.array([r for _, r in keys])
    order = sorted(set(role_arr.tolist()))
    rows = {r: np.flatnonzero(role_arr == r) for r in order}
    order = [r for r in order if r == "default" or inrole[rows[r]].sum() >= 1]

    def build(groups: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str], np.ndarray]:
        vecs, names = [], []
        for r in order:
            if r == "default":
                continue
            chosen = groups[r][inrole[groups[r]]]
            if len(chosen):
                names.append(r)
                vecs.append(x[chosen].mean(0))
        return x[groups["default"]].mean(0) - np.mean(vecs, axis=0), names, np.array(vecs)

    full_axis, full_names, full_vecs = build({r: rows[r] for r in order})
    np.testing.assert_allclose(full_axis, load_axis(res / "axis" / "axis.safetensors")[TARGET].numpy(), rtol=1e-4, atol=1e-4)
    unit = full_axis / np.linalg.norm(full_axis)
    full_proj = dict(zip(full_names, full_vecs @ unit, strict=True))
    table = pd.read_csv(res / "stability" / "stability.csv")
    full = 2  # 1 prompt x 2 questions
    assert list(table["responses_per_role"]) == [1, 2]
    rng = np.random.default_rng(SEED)
    n_default = len(rows["default"])
    for k, row in zip([1, 2], table.itertuples(), strict=True):
        cos, rho = [], []
        for _ in range(20):
            groups = {}
            for r in order:
                n = len(rows[r])
                size = n if k == full else (max(1, min(n, round(k * n_default / full))) if r == "default" else min(k, n))
                groups[r] = rows[r][rng.choice(n, size=size, replace=(k == full))]
            ax, names, vecs = build(groups)
            cos.append(ax @ unit / np.linalg.norm(ax))
            proj = vecs @ (ax / np.linalg.norm(ax))
            ref = np.array([full_proj[n] for n in names])
            rho.append(np.corrcoef(np.argsort(np.argsort(proj)), np.argsort(np.argsort(ref)))[0, 1]
                       if len(names) >= 3 and np.std(proj) > 0 and np.std(ref) > 0 else np.nan)
        assert row.cos_median == pytest.approx(np.median(cos), abs=1e-6)
        assert (row.cos_lo, row.cos_hi) == pytest.approx(_interval(cos), abs=1e-6)
        assert row.rho_median == pytest.approx(np.nanmedian(rho), abs=1e-6)
    assert (res / "stability" / "stability.png").stat().st_size > 10_000


# ---- capping intervals and the report -----------------------------------------------------------------


def test_capping_metrics_carry_paired_bootstrap_intervals(run):
    res = run / "results" / "tiny" / "evaluate_capping"
    details = pd.read_parquet(res / "details.parquet")
    metrics = pd.read_csv(res / "metrics.csv").set_index("experiment")

    def harmful(condition: str, kind: str = "jailbreak") -> pd.Series:
        rows = details[(details["condition"] == condition) & (details["kind"] == kind)].set_index("item")
        return rows["harm_score"].astype(float).ge(2).astype(float).where(rows["harm_score"].notna())

    base = harmful("unsteered")
    boot = [np.nanmean(base.to_numpy()[i]) for i in _draws(len(base))]
    assert (metrics.loc["unsteered", "harm_rate_lo"], metrics.loc["unsteered", "harm_rate_hi"]) == pytest.approx(_interval(boot), abs=1e-9)
    exp = next(e for e in metrics.index if e.startswith("layers_"))
    capped = harmful(exp).loc[base.index]
    diffs = [np.nanmean(capped.to_numpy()[i]) - np.nanmean(base.to_numpy()[i]) for i in _draws(len(base))]
    assert (metrics.loc[exp, "harm_change_lo"], metrics.loc[exp, "harm_change_hi"]) == pytest.approx(_interval(diffs), abs=1e-9)
    ppl = details[(details["condition"] == "unsteered") & (details["kind"] == "perplexity")]
    nll, tokens = ppl["value"].to_numpy(), ppl["n_tokens"].to_numpy(float)
    boot = [np.exp(nll[i].sum() / tokens[i].sum()) for i in _draws(len(nll))]
    assert (metrics.loc["unsteered", "perplexity_lo"], metrics.loc["unsteered", "perplexity_hi"]) == pytest.approx(_interval(boot), rel=1e-9)
    mc = details[(details["condition"] == "unsteered") & (details["kind"] == "mc")]["value"].to_numpy()
    boot = [mc[i].mean() for i in _draws(len(mc))]
    assert (metrics.loc["unsteered", "mc_accuracy_lo"], metrics.loc["unsteered", "mc_accuracy_hi"]) == pytest.approx(_interval(boot), abs=1e-9)
    capped_ppl = details[(details["condition"] == exp) & (details["kind"] == "perplexity")].set_index("item").loc[ppl["item"]]
    c_nll, c_tok = capped_ppl["value"].to_numpy(), capped_ppl["n_tokens"].to_numpy(float)
    boot = [np.exp(c_nll[i].sum() / c_tok[i].sum()) / np.exp(nll[i].sum() / tokens[i].sum()) - 1 for i in _draws(len(nll))]
    assert (metrics.loc[exp, "perplexity_change_lo"], metrics.loc[exp, "perplexity_change_hi"]) == pytest.approx(_interval(boot), abs=1e-9)
    assert (metrics["ci_level"] == CONF).all()
    rec = json.loads((res / "recommended.json").read_text())
    assert "bootstrap intervals" in rec["noise"] and isinstance(rec["beyond_noise"], list)


def test_report_shows_every_analysis_plot_with_how_to_read_it(run):
    snakemake(run, "--report", "report.html")
    html = (run / "report.html").read_text(errors="replace")
    for name in ("persona_space.png", "calibration.png", "role_counts.csv", "trait_scores.png", "axis_traits.png", "pc_traits.png", "pc1_ends.png", "stability.png", "drift_prediction.png",
                 "domain_drift.png", "compare_models.png", "layers.png", "pareto.png"):
        assert name in html, name
    for caption in ("trait_scores", "axis_traits", "pc_traits", "pc1_ends", "stability_plot", "drift_prediction_plot", "domain_drift",
                    "compare_models_plot", "compare_layers", "capping_pareto_plot"):
        assert "How to read" in (REPO / "workflow" / "report" / f"{caption}.rst").read_text(), caption
    # the plan printed at the start sizes the trait stage
    assert "trait_vectors" in (run / "snakemake.stderr").read_text()


def test_analysis_settings_are_checked_before_any_job(tmp_path):
    cfg = tiny_config(drift_analysis={"enabled": True})
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "config key 'drift_analysis.enabled'" in proc.stderr
    cfg = tiny_config(trait_vectors={"enabled": True, "judge": {"backend": "local"}})
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "config key 'trait_vectors.judge.backend'" in proc.stderr
    cfg = tiny_config(trait_vectors={"enabled": True, "traits": ["no_such_trait"]})
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "no trait named no_such_trait" in proc.stderr
