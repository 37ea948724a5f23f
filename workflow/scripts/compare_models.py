from assistant_axis.pipeline.compare_models import compare_models
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
p = sm.params
run_stage(
    sm,
    compare_models,
    persona_spaces=list(sm.input.persona_spaces),
    runs=list(p.runs),
    n_bootstrap=p.n_bootstrap,
    confidence=p.confidence,
    seed=p.seed,
    table_out=sm.output.table,
    plot_out=sm.output.plot,
    layers_plot=sm.output.layers_plot,
)
