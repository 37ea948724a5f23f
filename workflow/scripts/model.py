from assistant_axis.pipeline.model import prepare_model
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(sm, prepare_model, spec=sm.params.spec, facts=dict(sm.params.facts), output=sm.output[0])
