from assistant_axis.pipeline.runner import run_stage
from assistant_axis.pipeline.stability import stability

sm = snakemake  # noqa: F821
p = sm.params
run_stage(
    sm,
    stability,
    activations=list(sm.input.activations),
    scores=list(sm.input.scores),
    target_layer=p.target_layer,
    score=p.score,
    min_count=p.min_count,
    n_bootstrap=p.n_bootstrap,
    sizes=None if p.sizes is None else list(p.sizes),
    confidence=p.confidence,
    seed=p.seed,
    table_out=sm.output.table,
    plot_out=sm.output.plot,
    title=p.title,
)
