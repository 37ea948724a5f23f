from assistant_axis.pipeline.runner import run_stage
from assistant_axis.pipeline.score import score_shard

p = snakemake.params  # noqa: F821
run_stage(
    snakemake,  # noqa: F821
    score_shard,
    responses=snakemake.input.responses,  # noqa: F821
    roles_dir=p.roles_dir,
    judge=dict(p.judge),
    cache_path=p.cache_path,
    output=snakemake.output[0],  # noqa: F821
)
