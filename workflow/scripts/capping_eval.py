from assistant_axis.pipeline.capping_eval import evaluate_capping
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    evaluate_capping,
    capping_config=sm.input.config,
    responses=list(sm.input.responses),
    jailbreaks_file=sm.input.jailbreaks,
    harm_rubric_file=sm.input.harm_rubric,
    mc_file=sm.input.mc,
    model=sm.params.model,
    dtype=sm.params.dtype,
    device=sm.params.device,
    percentiles=None if sm.params.percentiles is None else list(sm.params.percentiles),
    n_jailbreaks=sm.params.n_jailbreaks,
    n_mc=sm.params.n_mc,
    mc_scoring=sm.params.mc_scoring,
    n_perplexity=sm.params.n_perplexity,
    generation=dict(sm.params.generation),
    batch_size=sm.params.batch_size,
    judge=dict(sm.params.judge),
    judge_cache=sm.params.judge_cache,
    harm_threshold=sm.params.harm_threshold,
    cache_dir=sm.params.cache_dir,
    details_out=sm.output.details,
    metrics_out=sm.output.metrics,
)
