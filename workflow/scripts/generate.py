from assistant_axis.pipeline.generate import generate_shard
from assistant_axis.pipeline.runner import run_stage

# The guard matters for the vllm backend: vLLM starts its engine with multiprocessing "spawn",
# which re-runs this file in the child as __mp_main__, where the snakemake object does not exist.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    p = sm.params
    run_stage(
        sm,
        generate_shard,
        model_json=sm.input.model,
        roles_dir=p.roles_dir,
        questions_file=p.questions_file,
        roles=list(p.roles),
        backend=p.backend,
        dtype=p.dtype,
        device=p.device,
        n_prompts=p.n_prompts,
        n_default_prompts=p.n_default_prompts,
        n_questions=p.n_questions,
        generation=dict(p.generation),
        batch_size=p.batch_size,
        vllm_options=dict(p.vllm),
        cache_dir=p.cache_dir,
        output=sm.output[0],
    )
