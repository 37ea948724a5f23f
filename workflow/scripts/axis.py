from assistant_axis.pipeline.axis import build_axis
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    build_axis,
    vectors=sm.input.vectors,
    model=sm.params.model,
    target_layer=sm.params.target_layer,
    axis_out=sm.output.axis,
    axis_pt_out=sm.output.axis_pt,
)
