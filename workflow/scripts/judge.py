from assistant_axis.pipeline.judge import judge_shard
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
p = sm.params
run_stage(
    sm,
    judge_shard,
    responses=sm.input.responses,
    roles_dir=p.roles_dir,
    judge=dict(p.judge),
    cache_path=p.cache_path,
    output=sm.output[0],
)
