from assistant_axis.pipeline.drift import drift_experiment
from assistant_axis.pipeline.runner import run_stage

# The guard matters for the vllm backend: an engine that spawns processes re-runs this file in the
# child as __mp_main__, where the snakemake object does not exist.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    p = sm.params
    run_stage(
        sm,
        drift_experiment,
        model_json=sm.input.model,
        backend=p.backend,
        vllm_options=dict(p.vllm),
        dtype=p.dtype,
        device=p.device,
        axis=sm.input.axis,
        target_layer=p.target_layer,
        seeds_file=sm.input.seeds,
        domains=list(p.domains),
        conversations_per_domain=p.conversations_per_domain,
        turns=p.turns,
        max_new_tokens=p.max_new_tokens,
        user_max_new_tokens=p.user_max_new_tokens,
        user_model=p.user_model,
        temperature=p.temperature,
        top_p=p.top_p,
        seed=p.seed,
        batch_size=p.batch_size,
        table_out=sm.output.table,
        transcripts_out=sm.output.transcripts,
        plot_out=sm.output.plot,
        title=p.title,
        cache_dir=p.cache_dir,
    )
