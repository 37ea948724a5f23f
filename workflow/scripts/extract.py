from assistant_axis.pipeline.extract import extract_shard
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
p = sm.params
run_stage(
    sm,
    extract_shard,
    model_json=sm.input.model,
    responses=sm.input.responses,
    dtype=p.dtype,
    device=p.device,
    batch_size=p.batch_size,
    max_batch_tokens=p.max_batch_tokens,
    cache_dir=p.cache_dir,
    output=sm.output[0],
    storage_dtype=p.storage_dtype,
    layers=None if p.layers is None else list(p.layers),
)
