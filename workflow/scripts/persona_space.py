from assistant_axis.pipeline.persona_space import persona_space
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    persona_space,
    vectors=sm.input.vectors,
    axis=sm.input.axis,
    target_layer=sm.params.target_layer,
    n_components=sm.params.n_components,
    n_extremes=sm.params.n_extremes,
    output=sm.output.pca,
    plot=sm.output.plot,
    layers_plot=sm.output.layers_plot,
    extremes_table=sm.output.extremes,
    extremes_plot=sm.output.extremes_plot,
    title=sm.params.title,
)
