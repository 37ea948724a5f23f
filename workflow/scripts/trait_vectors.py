from assistant_axis.pipeline.runner import run_stage
from assistant_axis.pipeline.trait_vectors import build_trait_vectors

# The guard matters for the vllm backend: an engine that spawns processes re-runs this file in the
# child as __mp_main__, where the snakemake object does not exist.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    p = sm.params
    run_stage(
        sm,
        build_trait_vectors,
        model_json=sm.input.model,
        traits_dir=sm.input.traits,
        traits=p.traits if p.traits == "all" else list(p.traits),
        n_pairs=p.n_pairs,
        n_questions=p.n_questions,
        backend=p.backend,
        dtype=p.dtype,
        device=p.device,
        vllm_options=dict(p.vllm),
        generation=dict(p.generation),
        batch_size=p.batch_size,
        judge=dict(p.judge),
        judge_cache=p.judge_cache,
        positive_min=p.positive_min,
        negative_max=p.negative_max,
        min_count=p.min_count,
        extraction_batch_size=p.extraction_batch_size,
        max_batch_tokens=p.max_batch_tokens,
        layers=None if p.layers is None else list(p.layers),
        cache_dir=p.cache_dir,
        vectors_out=sm.output.vectors,
        responses_out=sm.output.responses,
        counts_out=sm.output.counts,
        plot_out=sm.output.plot,
        title=p.title,
    )
