from assistant_axis.pipeline.extremes import persona_extremes
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(sm, persona_extremes, pca=sm.input.pca, n=sm.params.n, table_out=sm.output.table, plot_out=sm.output.plot, title=sm.params.title)
