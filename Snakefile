# assistant-axis: role responses -> activations -> judge scores -> role vectors -> Assistant Axis
# -> persona-space PCA -> capping calibration, for every model run named in the config.
# Run: snakemake --cores N   (see README.md; cluster: --profile workflow/profiles/slurm)

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from assistant_axis.capping import default_windows
from assistant_axis.models import get_config
from assistant_axis.pipeline.layout import shard_names, shard_roles
from assistant_axis.pipeline.settings import ConfigError, model_settings, validate_config, with_defaults
from assistant_axis.roles import RoleSetError, select_roles

min_version("9.0")


configfile: "config/config.yaml"


try:
    validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
    CFG = with_defaults(config)
    ROLES = select_roles(CFG["roles_dir"], CFG["roles"])
except (ConfigError, RoleSetError) as exc:
    raise WorkflowError(str(exc))

MODELS = list(CFG["models"])
SHARDS = shard_names(ROLES, CFG["shards"])
RESULTS = "results"

wildcard_constraints:
    model="|".join(MODELS),
    shard=r"\d{3}",


def run_settings(run):
    return model_settings(CFG, run)


def model_info(run):
    """Built-in or inferred description of the run's model (layers, target layer, short name)."""
    s = run_settings(run)
    info = get_config(s["model"]).as_dict()
    if "target_layer" in s:
        info["target_layer"] = s["target_layer"]
    return info


def roles_of(shard):
    return shard_roles(ROLES, CFG["shards"])[int(shard)]


def capping_windows(run):
    windows = run_settings(run)["capping"]["windows"]
    return [list(w) for w in (windows or default_windows(model_info(run)["total_layers"]))]


# Later stages append their final files here, so `rule all` asks for them.
EXTRA_TARGETS = []


include: "workflow/rules/generate.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/axis.smk"
include: "workflow/rules/capping_eval.smk"
include: "workflow/rules/drift.smk"


rule all:
    input:
        expand(RESULTS + "/{model}/axis.pt", model=MODELS),
        expand(RESULTS + "/{model}/capping_config.pt", model=MODELS),
        expand(RESULTS + "/{model}/plots/persona_space.png", model=MODELS),
        expand(RESULTS + "/{model}/plots/capping_calibration.png", model=MODELS),
        EXTRA_TARGETS,
    default_target: True
