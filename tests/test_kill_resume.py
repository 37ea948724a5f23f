"""kill -9 at every heavy stage (issue #14): a SIGKILLed job resumes from its unit cache.

For generate, extract, judge, evaluate_capping and drift, a job is killed with SIGKILL (its whole
process group, as a lost node or the OOM killer would) after k units are cached, then rerun. The
rerun must (1) produce outputs identical to an uninterrupted run, bit for bit (HF greedy or seeded
sampling in float32 on CPU is deterministic), (2) leave every unit finished before the kill untouched (same
mtime; the log reports them cached; the judge server bills every item once), (3) never trust a
torn file: a truncated cache entry planted for an unfinished unit is ignored and recomputed, and no
``*.tmp`` file is left behind.

Cost: one module-scoped reference run makes only the five stages' files (2 roles + default, 1 prompt
x 2 questions, 6 new tokens, one shard); each test copies it, deletes its own stage's outputs and
cache, and runs Snakemake for that stage's target only. The kill point is made deterministic by the
test-only ``ASSISTANT_AXIS_TEST_UNIT_DELAY`` (a pause after each cached unit): the test waits for
the k-th entry, then kills during the pause.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fakes.api_servers import FakeAnthropic
from pipeline_helpers import REPO, SNAKEMAKE, snakemake, tiny_config, write_config
from safetensors import safe_open

from assistant_axis.pipeline.cache import TEST_UNIT_DELAY_ENV

pytestmark = pytest.mark.slow

RES = Path("results") / "tiny"
ROLE_PLAY_ITEMS = 4  # pirate and ghost x 1 prompt x 2 questions; default replies are not judged
TARGETS = {
    "generate": [RES / "generate" / "shard_000.parquet"],
    "extract": [RES / "extract" / "shard_000.parquet"],
    "judge": [RES / "judge" / "shard_000.parquet"],
    "evaluate_capping": [RES / "evaluate_capping" / n for n in ("details.parquet", "metrics.csv", "pareto.csv",
                                                                 "recommended.json", "capping_recommended.safetensors")],
    "drift": [RES / "drift" / "drift.csv", RES / "drift" / "transcripts.json"],
}


def kill_config(**over: object) -> dict:
    """The smallest config that still has several units in every stage (one thread per job)."""
    cfg = tiny_config(
        roles=["default", "pirate", "ghost"], shards=1, threads=1, default_prompts=1, batch_size=2,
        generation={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 6, "seed": 0},
        # budget of an extraction group = 4 x batch_size rows: groups [default, pirate] and [ghost]
        extraction={"batch_size": 1, "max_batch_tokens": 16384, "storage_dtype": "float32", "layers": None},
        capping={"windows": [[10, 12]], "percentiles": [0.5]},
        capping_eval={"percentiles": [0.5], "n_jailbreaks": 2, "n_mc": 2, "n_perplexity": 2,
                      "generation": {"temperature": 0.0, "max_new_tokens": 4, "seed": 0}, "batch_size": 8},
        drift={"enabled": False, "domains": ["coding"], "conversations_per_domain": 1, "turns": 2,
               "max_new_tokens": 4, "user_max_new_tokens": 4},
    )
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run that makes only the files the five tests compare against."""
    work = tmp_path_factory.mktemp("kill_ref")
    write_config(work, kill_config())
    snakemake(work, *(str(t) for targets in TARGETS.values() for t in targets), timeout=600)
    return work


def _fresh_copy(reference: Path, dest: Path, stage: str) -> Path:
    """The reference run without ``stage``'s outputs and cache (upstream files and metadata kept)."""
    shutil.copytree(reference, dest, symlinks=True)
    shutil.rmtree(dest / RES / stage)
    shutil.rmtree(dest / RES / "cache" / stage)
    return dest


def _entries(folder: Path, pattern: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)} if folder.exists() else {}


def _start(work: Path, stage: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "1",
           *(str(t) for t in TARGETS[stage])]
    with open(work / f"killed_{stage}.out", "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    """SIGKILL the job's whole process group as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the job ended ({proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _rerun(work: Path, stage: str, env: dict[str, str] | None = None) -> None:
    snakemake(work, "--unlock")  # a SIGKILLed Snakemake leaves its lock behind, as after a power loss
    snakemake(work, *(str(t) for t in TARGETS[stage]), "--rerun-incomplete", env=env)


def _plant_torn_entry(reference_cache: Path, cache: Path, pattern: str) -> str:
    """Write the first half of a reference entry the killed job did not finish, as a torn write would."""
    missing = sorted(set(_entries(reference_cache, pattern)) - set(_entries(cache, pattern)))
    assert missing, "every unit was cached before the kill"
    name = missing[-1]
    data = (reference_cache / name).read_bytes()
    (cache / name).write_bytes(data[: len(data) // 2])
    return name


def _no_temp_files(work: Path) -> None:
    left = [str(p.relative_to(work)) for p in (work / RES).rglob("*") if ".tmp" in p.name]
    assert not left, f"temporary files left behind: {left}"


def _safetensors(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}, f.metadata()  # noqa: SIM118 - not a dict


def _same_as_reference(reference: Path, work: Path, stage: str) -> None:
    """Parquet: the same table bit for bit (values, schema, metadata; the file's bytes can differ with
    how Arrow chunked the concatenated units); safetensors: the same tensor bytes and metadata (the
    writer orders the metadata keys arbitrarily); every other file: the same bytes."""
    for target in TARGETS[stage]:
        if target.suffix == ".parquet":
            got, want = pq.read_table(work / target), pq.read_table(reference / target)
            assert got.equals(want, check_metadata=True), f"{target} differs from the uninterrupted run"
        elif target.suffix == ".safetensors":
            assert _safetensors(work / target) == _safetensors(reference / target), f"{target} differs from the uninterrupted run"
        else:
            assert (work / target).read_bytes() == (reference / target).read_bytes(), f"{target} differs from the uninterrupted run"


def _kill_resume_unit_stage(reference: Path, tmp_path: Path, stage: str, cache_rel: str, pattern: str, k: int) -> str:
    """Kill ``stage`` once ``k`` cache entries exist, plant a torn entry, rerun; return the rerun's log."""
    work = _fresh_copy(reference, tmp_path / "w", stage)
    cache, ref_cache = work / RES / "cache" / cache_rel, reference / RES / "cache" / cache_rel
    total = len(_entries(ref_cache, pattern))
    proc = _start(work, stage, {TEST_UNIT_DELAY_ENV: "60"})
    _kill_when(proc, lambda: len(_entries(cache, pattern)) >= k, f"{k} cached units of {stage}")
    finished = _entries(cache, pattern)
    assert len(finished) == k < total, f"expected {k} of {total} units cached at the kill, found {sorted(finished)}"
    assert not any((work / t).exists() for t in TARGETS[stage]), "a killed job left an output in place"
    torn = _plant_torn_entry(ref_cache, cache, pattern)
    _rerun(work, stage)
    after = _entries(cache, pattern)
    assert {n: after.get(n) for n in finished} == finished, "a unit finished before the kill was computed again"
    assert len(after) == total
    assert (cache / torn).read_bytes() == (ref_cache / torn).read_bytes(), "the torn entry was not recomputed"
    _same_as_reference(reference, work, stage)
    _no_temp_files(work)
    return (work / RES / "logs" / (f"{stage}_000.log" if stage in ("generate", "extract") else f"{stage}.log")).read_text()


def test_killed_generation_resumes_after_the_finished_role_groups(reference, tmp_path):
    """3 role groups (batch 2 = one role each); killed after the first: the rerun generates two groups, same texts."""
    log = _kill_resume_unit_stage(reference, tmp_path, "generate", "generate", "*.parquet", k=1)
    assert "generate: 3 units in 3 groups, 1 groups cached, 2 to do" in log
    assert "ignoring unreadable cache entry" in log


def test_killed_extraction_resumes_after_the_finished_role_groups(reference, tmp_path):
    """2 groups ([default, pirate], [ghost]); killed after the first: the rerun extracts ghost only, same activations."""
    log = _kill_resume_unit_stage(reference, tmp_path, "extract", "extract", "*.parquet", k=2)
    assert "extract: 3 units in 2 groups, 1 groups cached, 1 to do" in log
    assert "ignoring unreadable cache entry" in log


def test_killed_capping_evaluation_resumes_after_the_finished_conditions(reference, tmp_path):
    """2 conditions (unsteered, one cap); killed after the first: the rerun measures the cap only, same tables."""
    log = _kill_resume_unit_stage(reference, tmp_path, "evaluate_capping", "evaluate_capping/conditions", "*.parquet", k=1)
    assert "evaluate_capping: 2 units in 2 groups, 1 groups cached, 1 to do" in log
    assert "ignoring unreadable cache entry" in log
    assert "condition unsteered measured" not in log


def test_killed_drift_resumes_after_the_last_finished_turn(reference, tmp_path):
    """2 turns; killed after turn 1: the rerun generates turn 2 only, same conversations and projections."""
    log = _kill_resume_unit_stage(reference, tmp_path, "drift", "drift", "turn_*.json", k=1)
    assert "drift: turns 1-1 cached, resuming at turn 2 of 2" in log
    assert "ignoring unreadable turn cache" in log
    assert "turn 1/2 done" not in log


def test_killed_judge_pays_no_verdict_twice(reference, tmp_path):
    """The paid judge (fake Anthropic on loopback, one call at a time, each held 1 s before it is served) killed after 2 of 4
    verdicts: the rerun asks only for the other 2; every prompt is billed exactly once."""
    work = _fresh_copy(reference, tmp_path / "w", "judge")
    db = work / RES / "cache" / "judge" / "verdicts.sqlite"
    env = {"ANTHROPIC_API_KEY": "fake-anthropic-key-not-real"}

    def cached() -> int:
        if not db.exists():
            return 0
        con = sqlite3.connect(db, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])
        except sqlite3.OperationalError:  # the job has not created the table yet
            return 0
        finally:
            con.close()

    with FakeAnthropic(request_delay=1.0) as fake:
        judge = {"backend": "anthropic", "model": "claude-haiku-5-5", "base_url": fake.url, "budget_usd": 1.0, "max_concurrency": 1}
        write_config(work, kill_config(judge=judge))
        proc = _start(work, "judge", env)
        _kill_when(proc, lambda: cached() >= 2, "2 cached verdicts")
        at_kill = cached()
        assert 2 <= at_kill < ROLE_PLAY_ITEMS
        assert not (work / TARGETS["judge"][0]).exists()
        billed_at_kill = len(fake.billed)
        _rerun(work, "judge", env=env)
        assert cached() == ROLE_PLAY_ITEMS
        # nothing paid twice: each prompt billed once, and the rerun paid only for the unfinished ones
        assert len(fake.billed) == ROLE_PLAY_ITEMS
        assert set(Counter(fake.billed).values()) == {1}
        assert len(fake.billed) - billed_at_kill == ROLE_PLAY_ITEMS - at_kill
    scores = pq.read_table(work / TARGETS["judge"][0]).to_pylist()
    responses = pq.read_table(reference / TARGETS["generate"][0]).to_pylist()
    assert [r["key"] for r in scores] == [r["key"] for r in responses if r["role"] != "default"]
    assert {r["score"] for r in scores} == {3}  # the fake judge's default verdict
    _no_temp_files(work)
