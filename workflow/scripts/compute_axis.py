from assistant_axis.pipeline.runner import run_stage
from assistant_axis.pipeline.vectors import build_axis

sm = snakemake  # noqa: F821
run_stage(sm, build_axis, vectors=sm.input.vectors, model=sm.params.model, axis_out=sm.output.axis, axis_pt_out=sm.output.axis_pt)
