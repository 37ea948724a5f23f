# assistant-axis: role responses -> activations -> judge scores -> role vectors -> Assistant Axis
# -> persona space -> capping calibration -> capping evaluation -> drift, for every run in the config;
# then the analyses: trait vectors and what the axis means, stability, drift prediction, and the
# runs compared with each other.
# Run: snakemake --cores N   (see README.md; cluster: --profile workflow/profiles/slurm)
# The map of stages, files and modules: docs/ARCHITECTURE.md.

import sys

from snakemake.utils import min_version

min_version("9.0")

# A config given with --configfile names the runs on its own: the default's runs must not leak in.
if not workflow.overwrite_configfiles:
    workflow.configfile("config/config.yaml")


# Config files read strictly first (UTF-8, no key given twice: Snakemake's reader keeps the last silently).
from assistant_axis.pipeline.config import check_config_files

if problem := check_config_files([str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]):
    print(f"assistant-axis: {problem}", file=sys.stderr)
    sys.exit(1)


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/role_vectors.smk"
include: "workflow/rules/axis.smk"
include: "workflow/rules/persona_space.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/evaluate_capping.smk"
include: "workflow/rules/drift.smk"
include: "workflow/rules/trait_vectors.smk"
include: "workflow/rules/interpret.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/drift_analysis.smk"
include: "workflow/rules/compare_models.smk"


rule all:
    input:
        final_targets(),
    default_target: True
