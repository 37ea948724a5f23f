from assistant_axis.pipeline.calibrate import calibrate_capping
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    calibrate_capping,
    activations=list(sm.input.activations),
    axis=sm.input.axis,
    windows=[list(w) for w in sm.params.windows],
    percentiles=list(sm.params.percentiles),
    cap_first_token=bool(sm.params.cap_first_token),
    model=sm.params.model,
    target_layer=sm.params.target_layer,
    config_out=sm.output.config,
    reference_out=sm.output.reference,
    table_out=sm.output.table,
    plot_out=sm.output.plot,
)
