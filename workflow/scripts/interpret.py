from assistant_axis.pipeline.interpret import interpret
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    interpret,
    trait_vectors=sm.input.traits,
    axis=sm.input.axis,
    role_vectors=sm.input.vectors,
    target_layer=sm.params.target_layer,
    n_components=sm.params.n_components,
    n_traits=sm.params.n_traits,
    alignment_out=sm.output.alignment,
    axis_plot=sm.output.axis_plot,
    pcs_plot=sm.output.pcs_plot,
    ends_out=sm.output.ends,
    ends_plot=sm.output.ends_plot,
    title=sm.params.title,
)
