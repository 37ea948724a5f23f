# Shared by every rule file: the checked config, the runs and shards, the plan, and per-run helpers.
# Everything here runs at parse time, so it stays light: model facts come from the built-in table
# or a config.json (assistant_axis.models.describe_model), never from weights.

import functools
import os
import sys

from assistant_axis.models import SHARDED, resolve_backend
from assistant_axis.pipeline.layout import ALL_RUNS, RunLayout, shard_names, shard_roles
from assistant_axis.pipeline.plan import PlanError, data_files, format_plan, prepare
from assistant_axis.roles import role_file

def _shown(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# The config files in use: those given with --configfile, else the default (see the Snakefile).
CONFIG_FILES = [_shown(str(f)) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]

# Everything is checked before any job (config values, each run against its model's layer count,
# role and question files, data files, model references): a problem stops here, in one line per
# problem naming the file, the field and the fix, with no traceback.
try:
    PREPARED = prepare(
        config, os.path.join(workflow.basedir, "config", "config.schema.yaml"), workflow.basedir, CONFIG_FILES
    )
except PlanError as exc:
    print(f"assistant-axis: {exc}", file=sys.stderr)
    sys.exit(1)

CFG = PREPARED.config
ROLES = PREPARED.role_set.names
PLAN = PREPARED.plan
RUNS = list(CFG["models"])
SHARDS = shard_names(ROLES, CFG["shards"])
DATA = data_files(CFG, workflow.basedir)
L = RunLayout("{run}")  # paths with the run as a wildcard
# generate -> extract -> judge -> role_vectors -> axis go before the analyses when both are ready,
# so the axis (what most users wait for) is out first; the analyses fill in after it.
AXIS_PATH_PRIORITY = 10

# The plan (work, judge cost, disk, GPU memory, SLURM resources, GPU-hours) is printed once, by the
# main process (dry runs included); the job processes a cluster starts parse this file again silently.
if workflow.is_main_process:
    print(format_plan(PLAN), file=sys.stderr)

wildcard_constraints:
    run="|".join(RUNS),
    shard=r"\d{3}",


def shipped(value, key):
    """The configured data file, or (null) the one shipped with the workflow."""
    return DATA[key]


def settings(run):
    """Effective settings of a run: global sections overridden by the run's own, target layer and
    capping windows resolved (assistant_axis.pipeline.config.resolve_run). Do not modify."""
    return PREPARED.runs[run][0]


def facts(run):
    """The run's model facts (layers, hidden size, parameters, default target layer), as model.json will record them."""
    return PREPARED.runs[run][1]


def target_layer(run):
    return settings(run)["target_layer"]


@functools.lru_cache(maxsize=None)
def run_backend(run):
    """The run's generation backend: `auto` is vLLM where it is installed, else HF (the fallback said once per run)."""
    return resolve_backend(settings(run)["backend"], warn=lambda msg: print(f"run {run}: {msg}", file=sys.stderr))


def capping_windows(run):
    """Half-open layer windows to calibrate; [] when the run's capping is off."""
    return settings(run)["capping"]["windows"]


def hf_device(run):
    """Where HF stages (extraction; generation, capping evaluation and drift without vLLM) put the
    model: spread with device_map=auto over the GPUs the plan gives them when the model does not
    fit one GPU (`gpu_memory_gb`), else the configured device."""
    device = settings(run)["device"]
    if PLAN.runs[run].hf_gpus > 1 and device in ("auto", "cuda"):
        return SHARDED
    return device


def resources_of(stage, key):
    """Resource function for a rule: the planned `gpu`, `mem_mb` or `runtime` of the job's run."""
    return lambda w: PLAN.resources(w.run, stage)[key]


def roles_of(shard):
    return shard_roles(ROLES, CFG["shards"])[int(shard)]


def role_files(roles):
    """Input paths of the role files that define ``roles`` (assistant_axis.roles.role_file)."""
    return [role_file(CFG["roles_dir"], r) for r in roles]


def shards_of(path):
    """Input function: every shard of a per-shard output of the job's run."""
    return lambda w: expand(path, run=w.run, shard=SHARDS)


# Rule files append the final files of their stage; `rule all` asks for them for every run, for
# those in CAPPING_FINAL only for runs whose capping is on, and ALL_FINAL (files of no single run,
# under results/_all/) once.
FINAL = []
CAPPING_FINAL = []
ALL_FINAL = []


def final_targets():
    capped = [run for run in RUNS if capping_windows(run)]
    return expand(FINAL, run=RUNS) + expand(CAPPING_FINAL, run=capped) + ALL_FINAL
