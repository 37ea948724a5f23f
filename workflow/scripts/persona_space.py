from assistant_axis.pipeline.runner import run_stage
from assistant_axis.pipeline.vectors import persona_space

sm = snakemake  # noqa: F821
run_stage(
    sm,
    persona_space,
    vectors=sm.input.vectors,
    axis=sm.input.axis,
    target_layer=sm.params.target_layer,
    n_components=sm.params.n_components,
    output=sm.output.pca,
    plot=sm.output.plot,
    layers_plot=sm.output.layers_plot,
    title=sm.params.model,
)
