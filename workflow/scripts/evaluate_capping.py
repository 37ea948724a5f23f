from assistant_axis.pipeline.evaluate_capping import evaluate_capping
from assistant_axis.pipeline.runner import run_stage

# The guard matters for the vllm backend: an engine that spawns processes re-runs this file in the
# child as __mp_main__, where the snakemake object does not exist.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    p = sm.params
    run_stage(
        sm,
        evaluate_capping,
        model_json=sm.input.model,
        capping_config=sm.input.config,
        responses=list(sm.input.responses),
        jailbreaks_file=sm.input.jailbreaks,
        harm_rubric_file=sm.input.harm_rubric,
        mc_file=sm.input.mc,
        backend=p.backend,
        vllm_options=dict(p.vllm),
        dtype=p.dtype,
        device=p.device,
        percentiles=None if p.percentiles is None else list(p.percentiles),
        n_jailbreaks=p.n_jailbreaks,
        n_mc=p.n_mc,
        mc_scoring=p.mc_scoring,
        n_perplexity=p.n_perplexity,
        generation=dict(p.generation),
        batch_size=p.batch_size,
        judge=dict(p.judge),
        judge_cache=p.judge_cache,
        harm_threshold=p.harm_threshold,
        max_perplexity_increase=p.max_perplexity_increase,
        max_mc_drop=p.max_mc_drop,
        cache_dir=p.cache_dir,
        n_bootstrap=p.n_bootstrap,
        confidence=p.confidence,
        bootstrap_seed=p.bootstrap_seed,
        details_out=sm.output.details,
        metrics_out=sm.output.metrics,
        pareto_out=sm.output.pareto,
        plot_out=sm.output.plot,
        recommended_out=sm.output.recommended,
        config_out=sm.output.config,
        reference_out=sm.output.reference,
    )
