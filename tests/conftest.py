"""Shared fixtures: the embedded model and the one finished pipeline run, each made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from filelock import FileLock
from pipeline_helpers import shared_config, snakemake, write_config, write_inputs
from tiny_models import build_tiny_model

from assistant_axis.models import DEFAULT_MODEL, load_model


@pytest.fixture(scope="session")
def fp32_model():
    """The embedded SmolLM2-135M-Instruct in float32 (exact comparisons)."""
    return load_model(DEFAULT_MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(fp32_model):
    return fp32_model[1]


def _finish_shared_run(root: Path) -> Path:
    """Run the shared config in ``root/run`` unless an earlier call (or xdist worker) finished it."""
    workdir = root / "run"
    done = root / "done"
    if done.exists():
        return workdir
    if workdir.exists():  # a worker died half-way: start clean rather than trust a partial run
        shutil.rmtree(workdir)
    other = build_tiny_model("llama3", root / "tiny_llama3")
    write_config(workdir, shared_config(other))
    write_inputs(workdir)
    proc = snakemake(workdir, timeout=2700, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    (workdir / "snakemake.stderr").write_text(proc.stderr)
    done.touch()
    return workdir


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """One complete pipeline run of the shared config (pipeline_helpers.shared_config): two models,
    every stage and analysis. Tests only read it; a test that edits inputs or reruns a stage works
    on `copy_run` of it.

    Why session-wide and locked: the run is the most expensive thing in the suite (minutes on two
    cores). Under pytest-xdist every worker has its own session, so the run lives in the directory
    all workers share (the parent of their base temp) and a file lock lets the first worker make it
    while the others wait and then read the same files.
    """
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        return _finish_shared_run(tmp_path_factory.mktemp("shared_run", numbered=False))
    root = tmp_path_factory.getbasetemp().parent / "shared_run"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        return _finish_shared_run(root)


# Modules whose tests use `shared_run`. Under `--dist loadscope` they form one scope, so a single
# xdist worker runs them one after the other while the other worker goes on with the rest of the
# suite, instead of idling on the lock until the run is made.
SHARED_RUN_MODULES = ("tests/test_pipeline.py", "tests/test_analyses.py")

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist not installed: serial runs need no scheduler
    pass
else:

    class _SharedRunScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "shared_run" if scope.endswith(SHARED_RUN_MODULES) else scope

    def pytest_xdist_make_scheduler(config: pytest.Config, log) -> LoadScopeScheduling | None:
        """`--dist loadscope` with the shared-run modules kept on one worker; other modes unchanged."""
        if config.getoption("dist") == "loadscope":
            return _SharedRunScopeScheduling(config, log)
        return None
