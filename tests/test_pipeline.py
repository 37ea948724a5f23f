"""The Snakemake pipeline end to end on a tiny config: every stage, stale-only reruns, resume, errors.

Most tests read the session's shared finished run (tests/conftest.py); the stale-rerun cases are
dry runs on a copy of it with one input changed."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from fakes.api_servers import FakeAnthropic
from pipeline_helpers import (
    REPO,
    TINY_ROLES,
    copy_run,
    planned_jobs,
    read_config,
    snakemake,
    tiny_config,
    write_config,
)
from safetensors.torch import load_file

from assistant_axis.axis import load_axis
from assistant_axis.capping import CappingConfig
from assistant_axis.pipeline.layout import shard_roles

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def done_run(shared_run: Path) -> Path:
    """The session's shared finished run (tests/conftest.py): read only; tests that edit inputs copy it."""
    return shared_run


def test_every_stage_produces_its_outputs(done_run):
    res = done_run / "results" / "tiny"
    axis = torch.load(res / "axis" / "axis.pt", weights_only=True)["axis"]
    assert axis.shape == (30, 576)
    assert torch.equal(load_axis(res / "axis" / "axis.safetensors"), axis)
    ref = torch.load(res / "calibrate" / "capping_config.pt", weights_only=True)
    assert {e["id"] for e in ref["experiments"]} == {"layers_10:12-p0.25", "layers_10:12-p0.5", "layers_14:16-p0.25", "layers_14:16-p0.5"}
    capping = CappingConfig.load(res / "calibrate" / "capping.safetensors")
    assert len(capping.experiments) == 4
    # the first-token policy (config key capping.cap_first_token, default false) is stated in both files
    assert ref["first_token"] == "skip" and capping.cap_first_token is False
    counts = pd.read_csv(res / "role_vectors" / "role_counts.csv")
    assert set(counts["role"]) == set(TINY_ROLES)
    assert counts["kept"].any()
    pca = json.loads((res / "persona_space" / "persona_space.json").read_text())
    assert len(pca["per_layer"]) == 30 and pca["target_layer"] == 15
    for plot in ("persona_space/persona_space.png", "persona_space/axis_layers.png", "calibrate/calibration.png"):
        assert (res / plot).stat().st_size > 10_000


def _run_values(res: Path) -> dict[str, torch.Tensor]:
    """Role vectors, axis and every capping floor of a finished run, as named in tests/data/golden."""
    values = {f"role_vector.{k}": v for k, v in load_file(str(res / "role_vectors" / "role_vectors.safetensors")).items()}
    values["axis"] = load_axis(res / "axis" / "axis.safetensors")
    for exp in CappingConfig.load(res / "calibrate" / "capping.safetensors").experiments:
        values[f"floors.{exp.id}"] = torch.tensor([c.floor for c in exp.caps], dtype=torch.float64)
        values[f"layers.{exp.id}"] = torch.tensor([c.layer for c in exp.caps])
        values[f"vectors.{exp.id}"] = torch.stack([c.vector for c in exp.caps])
    return values


def test_outputs_equal_the_values_stored_before_the_architecture_change(done_run):
    """The tiny run gives the texts and numbers the code gave before the stages were reshaped (tests/data/golden).

    Texts and scores are equal; numbers agree to 1e-5 of each tensor's largest value. On the machine
    that stored them they are bitwise equal; the CPU's float32 kernels round differently elsewhere
    (an AMD EPYC without AVX-512, running the very code that stored them, moves role vectors by one
    unit in the last place, 8e-5 on values of 533, and capping floors, percentiles of 576-term dot
    products, by up to 2.4e-6 relative). A method change moves them by far more.
    """
    res = done_run / "results" / "tiny"
    golden = REPO / "tests" / "data" / "golden"
    texts = json.loads((golden / "tiny_run_texts.json").read_text())
    responses = pd.concat(pd.read_parquet(p) for p in sorted((res / "generate").glob("shard_*.parquet")))
    assert dict(zip(responses["key"], responses["response"], strict=True)) == texts["responses"]
    scores = pd.concat(pd.read_parquet(p) for p in sorted((res / "judge").glob("shard_*.parquet")))
    assert {k: None if pd.isna(v) else int(v) for k, v in zip(scores["key"], scores["score"], strict=True)} == texts["scores"]
    expected = load_file(str(golden / "tiny_run.safetensors"))
    values = _run_values(res)
    assert set(values) == set(expected)
    for key, want in expected.items():
        scale = float(want.abs().max()) if want.is_floating_point() else 0.0
        torch.testing.assert_close(values[key].to(want.dtype), want, rtol=0, atol=1e-5 * scale, msg=lambda m, key=key: f"{key}: {m}")


def test_shards_have_the_documented_layout(done_run):
    res = done_run / "results" / "tiny"
    responses = pd.concat(pd.read_parquet(p) for p in sorted((res / "generate").glob("shard_*.parquet")))
    assert len(responses) == 5 * 1 * 2 + 2 * 2  # 5 roles x 1 prompt x 2 questions + default 2 x 2
    assert responses["key"].is_unique
    assert (responses["n_tokens"] <= 8).all()
    shard = sorted((res / "extract").glob("shard_*.parquet"))[0]
    meta = pq.read_schema(shard).metadata
    assert meta[b"model"] == b"embedded:smollm2-135m-instruct" and meta[b"hidden_size"] == b"576"
    assert json.loads(meta[b"layers"]) == list(range(30)) and meta[b"dtype"] == b"float32"
    df = pd.read_parquet(shard)
    assert len(df["layer_015"].iloc[0]) == 576
    n = duckdb.sql(f"SELECT count(*), max(len(layer_000)) FROM '{shard}'").fetchall()[0]
    assert n == (len(df), 576)
    scores = pd.concat(pd.read_parquet(p) for p in (res / "judge").glob("shard_*.parquet"))
    assert set(scores["role"]) == set(TINY_ROLES) - {"default"}
    assert scores["score"].dropna().between(0, 3).all()


def test_dry_run_after_complete_run_has_nothing_to_do(done_run):
    start = time.perf_counter()
    proc = snakemake(done_run, "-n")
    took = time.perf_counter() - start
    assert "Nothing to be done" in proc.stdout + proc.stderr
    print(f"dry run on the completed tiny run: {took:.1f} s")


def _models(jobs: list[tuple[str, str]]) -> set[str]:
    """Model runs named by the jobs' wildcards (jobs without a model wildcard, like `all`, are skipped)."""
    return {m.group(1) for _, wc in jobs for m in [re.search(r"run=([^,]+)", wc)] if m}


def _shard_of(role: str) -> str:
    """The generation shard that holds ``role`` in the shared run (two shards, round robin)."""
    return next(f"{i:03d}" for i, roles in enumerate(shard_roles(TINY_ROLES, 2)) if role in roles)


def _shards(jobs: list[tuple[str, str]], rule: str) -> set[tuple[str, str]]:
    """(run, shard) of the planned jobs of a per-shard rule."""
    found = set()
    for r, wc in jobs:
        if r == rule:
            m = re.search(r"run=([^,]+), shard=(\d+)", wc)
            assert m, wc
            found.add((m.group(1), m.group(2)))
    return found


def test_adding_a_model_runs_only_that_model(done_run, tmp_path):
    work = copy_run(done_run, tmp_path / "w")
    cfg = read_config(work)
    cfg["models"]["third"] = dict(cfg["models"]["tiny"])
    write_config(work, cfg)
    jobs = planned_jobs(work)
    assert _models(jobs) == {"third"}
    assert {r for r, _ in jobs} >= {"generate", "extract", "judge", "axis"}


def test_max_new_tokens_change_for_one_model_reruns_its_stages_only(done_run, tmp_path):
    work = copy_run(done_run, tmp_path / "w")
    cfg = read_config(work)
    cfg["models"]["other"]["generation"] = {"max_new_tokens": 6}
    write_config(work, cfg)
    jobs = planned_jobs(work)
    assert _shards(jobs, "generate") == {("other", "000"), ("other", "001")}
    assert _shards(jobs, "extract") == _shards(jobs, "judge") == {("other", "000"), ("other", "001")}
    assert {r for r, _ in jobs} >= {"role_vectors", "axis", "persona_space", "drift", "compare_models"}
    assert "trait_vectors" not in {r for r, _ in jobs}  # its replies have their own max_new_tokens
    assert _models(jobs) == {"other"}


def test_editing_one_role_file_regenerates_only_that_role(done_run, tmp_path):
    """Only the shard holding the role is generated, extracted and judged again, for each model.

    Within the shard the generation cache then redoes only the role group (batch) holding the role:
    a group's texts share one random stream (assistant_axis.pipeline.cache.group_units); here each
    tiny shard is one group.
    """
    work = copy_run(done_run, tmp_path / "w")
    role_path = work / "roles" / "instructions" / "ghost.json"
    role = json.loads(role_path.read_text())
    role["instruction"][0]["pos"] = "You are a ghost who haunts a lighthouse and speaks in whispers."
    role_path.write_text(json.dumps(role))
    jobs = planned_jobs(work)
    shard = _shard_of("ghost")
    both = {("tiny", shard), ("other", shard)}
    assert _shards(jobs, "generate") == _shards(jobs, "extract") == _shards(jobs, "judge") == both
    assert "model" not in {r for r, _ in jobs}


def test_editing_the_questions_file_regenerates_every_role(done_run, tmp_path):
    work = copy_run(done_run, tmp_path / "w")
    questions = (work / "questions.jsonl").read_text().splitlines()
    first = json.loads(questions[0])
    questions[0] = json.dumps({**first, "question": first["question"] + " Answer briefly."})
    (work / "questions.jsonl").write_text("\n".join(questions) + "\n")
    jobs = planned_jobs(work)
    every = {(run, shard) for run in ("tiny", "other") for shard in ("000", "001")}
    assert _shards(jobs, "generate") == _shards(jobs, "judge") == every


def test_touching_inputs_without_changing_them_reruns_nothing(done_run, tmp_path):
    """Snakemake 9 reruns a job whose input is newer than its output unless the input's checksum
    (recorded for inputs under 1 MB) is unchanged: role files and questions are compared by content."""
    work = copy_run(done_run, tmp_path / "w")
    later = time.time() + 60
    for path in [*(work / "roles" / "instructions").glob("*.json"), work / "questions.jsonl", work / "config" / "config.yaml"]:
        os.utime(path, (later, later))
    proc = snakemake(work, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_changing_the_judge_rescores_without_regenerating(done_run, tmp_path):
    work = copy_run(done_run, tmp_path / "w")
    with FakeAnthropic() as fake:
        cfg = read_config(work)
        cfg["judge"] = {"backend": "anthropic", "model": "claude-haiku-5-5", "base_url": fake.url, "budget_usd": 1.0}
        write_config(work, cfg)
        env = {"ANTHROPIC_API_KEY": "fake-anthropic-key-not-real"}
        jobs = planned_jobs(work, env=env)
        rules = {r for r, _ in jobs}
        every = {(run, shard) for run in ("tiny", "other") for shard in ("000", "001")}
        assert _shards(jobs, "judge") == every
        assert "axis" in rules
        assert not rules & {"generate", "extract", "model"}
        # score for real (the judge jobs only: what follows is plain arithmetic on the scores)
        snakemake(work, "--until", "judge", env=env)
        calls = fake.requests["POST /v1/messages"]
        role_play = sum(int((pd.read_parquet(p)["role"] != "default").sum()) for p in work.glob("results/*/generate/shard_*.parquet"))
        assert calls == role_play == 20  # one per role-play response, none for default ones
        # a forced rerun of scoring is served from the cache: no new paid call
        snakemake(work, "--forcerun", "judge", "--until", "judge", env=env)
        assert fake.requests["POST /v1/messages"] == calls
    for log in work.glob("results/*/logs/*.log"):
        assert "fake-anthropic-key-not-real" not in log.read_text()


def test_config_errors_name_the_key(tmp_path):
    write_config(tmp_path, tiny_config(generation={"temperature": -1}))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "config key 'generation.temperature'" in proc.stdout + proc.stderr
    write_config(tmp_path, tiny_config(roles=["default", "no_such_role"]))
    proc = snakemake(tmp_path, "-n", check=False)
    assert "no role file for no_such_role" in proc.stdout + proc.stderr
    cfg = tiny_config()
    cfg["models"]["tiny"]["bakend"] = "hf"
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert "config key 'models.tiny'" in proc.stdout + proc.stderr and "bakend" in proc.stdout + proc.stderr


@pytest.mark.vllm
def test_vllm_run_generates_evaluates_and_drifts_with_vllm(tmp_path, done_run):
    """backend auto = vLLM where installed: generation, capping evaluation (every condition in one
    engine) and drift run on vLLM; the files keep the HF run's layout and the scores agree."""
    cfg = tiny_config(drift={"enabled": True, "domains": ["coding", "therapy"], "turns": 2, "max_new_tokens": 8,
                             "user_max_new_tokens": 8})
    cfg["models"]["tiny"]["backend"] = "auto"
    cfg["vllm"] = {"kv_cache_gib": 1}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, timeout=1500)
    res, hf = tmp_path / "results" / "tiny", done_run / "results" / "tiny"
    target = "generate/shard_000.parquet"
    vllm_out, hf_out = pq.read_table(res / target), pq.read_table(hf / target)
    assert vllm_out.schema.remove_metadata() == hf_out.schema.remove_metadata()
    assert vllm_out.column("key").to_pylist() == hf_out.column("key").to_pylist()
    assert all(0 < n <= 8 for n in vllm_out.column("n_tokens").to_pylist())
    assert pq.read_schema(res / target).metadata[b"backend"] == b"vllm"
    log = (res / "logs" / "evaluate_capping.log").read_text()
    assert "vllm backend" in log and "one vLLM call" in log
    metrics = pd.read_csv(res / "evaluate_capping" / "metrics.csv").set_index("experiment")
    hf_metrics = pd.read_csv(hf / "evaluate_capping" / "metrics.csv").set_index("experiment")
    assert list(metrics.index) == list(hf_metrics.index)  # unsteered, two experiments, no persona
    # the same MC items scored by the same float32 model: vLLM's prompt log-probabilities agree with HF
    assert metrics.loc["unsteered", "mc_accuracy"] == hf_metrics.loc["unsteered", "mc_accuracy"]
    assert metrics["perplexity"].dropna().between(1, 1e4).all() and (metrics["capped_share"].iloc[1:3] > 0).all()
    drift = pd.read_csv(res / "drift" / "drift.csv")
    assert len(drift) == 4 and drift["projection"].notna().all()
    assert "vllm backend" in (res / "logs" / "drift.log").read_text()


def test_auto_backend_falls_back_to_hf_without_vllm(tmp_path, done_run):
    """Where vLLM cannot be imported, backend auto says so once and generates with HF: the same texts as an hf run."""
    hide = tmp_path / "hide_vllm"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['vllm'] = None  # as if vLLM were not installed\n")
    work = tmp_path / "w"
    cfg = tiny_config()
    cfg["models"]["tiny"]["backend"] = "auto"
    write_config(work, cfg)
    target = "results/tiny/generate/shard_000.parquet"
    # keep the caller's PYTHONPATH behind the hiding folder: it names the source tree under test
    pythonpath = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH", "")) if p)
    proc = snakemake(work, target, env={"PYTHONPATH": pythonpath})
    assert "run tiny: backend 'auto' generates with HF transformers: vLLM is not installed" in proc.stderr
    assert pq.read_schema(work / target).metadata[b"backend"] == b"hf"
    pd.testing.assert_frame_equal(pd.read_parquet(work / target), pd.read_parquet(done_run / target))


def _shard_activations(res: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, roles and activations (rows x layers x hidden, float64) of every extraction shard, read with pyarrow."""
    keys: list[str] = []
    roles: list[str] = []
    acts = []
    for shard in sorted((res / "extract").glob("shard_*.parquet")):
        table = pq.read_table(shard)
        layers = sorted(c for c in table.column_names if c.startswith("layer_"))
        keys += table.column("key").to_pylist()
        roles += table.column("role").to_pylist()
        acts.append(np.stack([np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c in layers], axis=1).astype(np.float64))
    return keys, np.array(roles), np.concatenate(acts)


def test_role_vectors_axis_and_floors_equal_a_numpy_recomputation_from_the_shards(done_run):
    """Recomputed from the Parquet shards and scores with numpy alone (the formulas of docs/NOTES):
    role vector = mean of the role's score-3 responses, default = mean of all default responses,
    axis = default - mean(role vectors), floor at layer L for percentile p = the (1 - p) quantile of
    every response's projection on the unit axis[L]."""
    res = done_run / "results" / "tiny"
    keys, roles, x = _shard_activations(res)
    assert x.shape[1:] == (30, 576)
    scores = pd.concat(pd.read_parquet(p) for p in sorted((res / "judge").glob("shard_*.parquet")))
    score_of = dict(zip(scores["key"], scores["score"], strict=True))
    in_role = np.array([score_of.get(k) == 3 for k in keys])
    vectors = {"default": x[roles == "default"].mean(0)}
    for role in TINY_ROLES[1:]:
        rows = (roles == role) & in_role
        if rows.sum() >= 1:  # role_vectors.min_count of the shared config
            vectors[role] = x[rows].mean(0)
    assert len(vectors) > 2, "too few roles kept for the comparison to mean anything"
    stored = load_file(str(res / "role_vectors" / "role_vectors.safetensors"))
    assert set(stored) == set(vectors)
    for role, vec in vectors.items():
        np.testing.assert_allclose(stored[role].double().numpy(), vec, rtol=1e-5, atol=1e-4 * np.abs(vec).max(), err_msg=role)
    axis = vectors["default"] - np.mean([v for r, v in vectors.items() if r != "default"], axis=0)
    np.testing.assert_allclose(load_axis(res / "axis" / "axis.safetensors").double().numpy(), axis, rtol=1e-5, atol=1e-4 * np.abs(axis).max())
    unit = axis / np.linalg.norm(axis, axis=1, keepdims=True)
    proj = np.einsum("nlh,lh->nl", x, unit)
    experiments = {e.id: e for e in CappingConfig.load(res / "calibrate" / "capping.safetensors").experiments}
    expected_ids = set()
    for start, stop in ((10, 12), (14, 16)):
        for p in (0.25, 0.5):
            exp = experiments[f"layers_{start}:{stop}-p{p:g}"]
            expected_ids.add(exp.id)
            assert [c.layer for c in exp.caps] == list(range(start, stop))
            for cap in exp.caps:
                floor = np.quantile(proj[:, cap.layer], 1 - p)
                assert cap.floor == pytest.approx(floor, rel=1e-5, abs=1e-5 * np.abs(proj[:, cap.layer]).max()), (exp.id, cap.layer)
                np.testing.assert_allclose(cap.vector.double().numpy(), unit[cap.layer], atol=1e-6)
    assert set(experiments) == expected_ids
