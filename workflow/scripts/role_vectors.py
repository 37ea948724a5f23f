from assistant_axis.pipeline.role_vectors import build_role_vectors
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    build_role_vectors,
    activations=list(sm.input.activations),
    scores=list(sm.input.scores),
    min_count=sm.params.min_count,
    score=sm.params.score,
    model=sm.params.model,
    vectors_out=sm.output.vectors,
    counts_out=sm.output.counts,
)
