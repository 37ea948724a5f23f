# Shared by every rule file: the validated config, the runs and shards, and per-run helpers.
# Everything here runs at parse time, so it stays light: model facts come from the built-in table
# or a config.json (assistant_axis.models.describe_model), never from weights.

import functools
import os

from snakemake.exceptions import WorkflowError

from assistant_axis.capping import default_windows
from assistant_axis.models import ModelNotFoundError, describe_model
from assistant_axis.pipeline.config import ConfigError, load_config, run_settings
from assistant_axis.pipeline.layout import RunLayout, shard_names, shard_roles
from assistant_axis.roles import RoleSetError, select_roles

try:
    CFG = load_config(config, os.path.join(workflow.basedir, "config", "config.schema.yaml"))
    ROLES = select_roles(CFG["roles_dir"], CFG["roles"])
except (ConfigError, RoleSetError) as exc:
    raise WorkflowError(str(exc))

RUNS = list(CFG["models"])
SHARDS = shard_names(ROLES, CFG["shards"])
L = RunLayout("{run}")  # paths with the run as a wildcard

wildcard_constraints:
    run="|".join(RUNS),
    shard=r"\d{3}",

# Evaluation and drift data shipped beside the Snakefile, used where the config says null.
SHIPPED = {
    "jailbreaks": "resources/jailbreaks/jailbreaks.jsonl",
    "harm_rubric": "resources/jailbreaks/harm_rubric.txt",
    "mc_file": "resources/capability/mc.jsonl",
    "seeds_file": "resources/drift/seeds.json",
}


def shipped(value, key):
    """The configured data file, or (null) the one shipped with the workflow."""
    return value or os.path.join(workflow.basedir, SHIPPED[key])


def settings(run):
    """Effective settings of a run: global sections overridden by the run's own."""
    return run_settings(CFG, run)


@functools.lru_cache(maxsize=None)
def _facts(spec):
    try:
        return describe_model(spec)
    except (ModelNotFoundError, ValueError) as exc:
        raise WorkflowError(str(exc))


def facts(run):
    """The run's model facts (layers, hidden size, default target layer), as model.json will record them."""
    return _facts(settings(run)["model"])


def target_layer(run):
    s = settings(run)
    return s["target_layer"] if "target_layer" in s else facts(run).target_layer


def capping_windows(run):
    windows = settings(run)["capping"]["windows"]
    return [list(w) for w in (windows or default_windows(facts(run).total_layers))]


def roles_of(shard):
    return shard_roles(ROLES, CFG["shards"])[int(shard)]


def shards_of(path):
    """Input function: every shard of a per-shard output of the job's run."""
    return lambda w: expand(path, run=w.run, shard=SHARDS)


def uses_gpu(run):
    return 0 if settings(run)["device"] == "cpu" else 1


# Rule files append the final files of their stage; `rule all` asks for them for every run.
FINAL = []


def final_targets():
    return expand(FINAL, run=RUNS)
