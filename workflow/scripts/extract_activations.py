from assistant_axis.pipeline.activations import extract_shard
from assistant_axis.pipeline.runner import run_stage

p = snakemake.params  # noqa: F821
run_stage(
    snakemake,  # noqa: F821
    extract_shard,
    responses=snakemake.input.responses,  # noqa: F821
    model_path=p.model,
    model_spec=p.model,
    dtype=p.dtype,
    device=p.device,
    batch_size=p.batch_size,
    max_batch_tokens=p.max_batch_tokens,
    cache_dir=p.cache_dir,
    output=snakemake.output[0],  # noqa: F821
)
