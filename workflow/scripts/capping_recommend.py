from assistant_axis.pipeline.capping_eval import recommend_capping
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
run_stage(
    sm,
    recommend_capping,
    metrics=sm.input.metrics,
    capping_config=sm.input.config,
    max_perplexity_increase=sm.params.max_perplexity_increase,
    max_mc_drop=sm.params.max_mc_drop,
    harm_threshold=sm.params.harm_threshold,
    model=sm.params.model,
    pareto_out=sm.output.pareto,
    plot_out=sm.output.plot,
    recommended_out=sm.output.recommended,
    config_out=sm.output.config,
    reference_out=sm.output.reference,
)
