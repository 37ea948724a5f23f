# Trait vectors: replies under each trait's pos/neg instructions, judged 0-100, mean(pos) - mean(neg)
# per layer. Final targets only when trait_vectors.enabled (then interpret reads them).

TRAITS = CFG["trait_vectors"]


def trait_judge(run):
    """The trait judge: trait_vectors.judge, or (null) the run's own judge."""
    return TRAITS["judge"] or settings(run)["judge"]


def trait_generation(run):
    """The run's sampling settings with the trait reply length (trait_vectors.max_new_tokens, null = the run's)."""
    gen = dict(settings(run)["generation"])
    if TRAITS["max_new_tokens"]:
        gen["max_new_tokens"] = TRAITS["max_new_tokens"]
    return gen


rule trait_vectors:
    """Generate (HF or vLLM), judge 0-100 (cached verdicts) and extract the kept replies; resumable per trait."""
    input:
        model=L.model_json,
        traits=shipped(TRAITS["traits_dir"], "traits_dir"),
    output:
        vectors=L.stage("trait_vectors", "trait_vectors.safetensors"),
        responses=L.stage("trait_vectors", "trait_responses.parquet"),
        counts=report(L.stage("trait_vectors", "trait_counts.csv"), category="Traits", caption="../report/trait_counts.rst"),
        plot=report(L.stage("trait_vectors", "trait_scores.png"), category="Traits", caption="../report/trait_scores.rst"),
    params:
        traits=TRAITS["traits"],
        n_pairs=TRAITS["pairs_per_trait"],
        n_questions=TRAITS["questions_per_trait"],
        backend=lambda w: run_backend(w.run),
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        vllm=lambda w: settings(w.run)["vllm"],
        generation=lambda w: trait_generation(w.run),
        batch_size=CFG["batch_size"],
        judge=lambda w: trait_judge(w.run),
        judge_cache=lambda w: RunLayout(w.run).cache("trait_vectors", "verdicts.sqlite"),
        positive_min=TRAITS["positive_min"],
        negative_max=TRAITS["negative_max"],
        min_count=TRAITS["min_count"],
        extraction_batch_size=lambda w: settings(w.run)["extraction"]["batch_size"],
        max_batch_tokens=lambda w: settings(w.run)["extraction"]["max_batch_tokens"],
        layers=lambda w: settings(w.run)["extraction"]["layers"],
        cache_dir=lambda w: RunLayout(w.run).cache("trait_vectors"),
        title=lambda w: w.run,
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("trait_vectors", "mem_mb"),
        runtime=resources_of("trait_vectors", "runtime"),
        gpu=resources_of("trait_vectors", "gpu"),
    log:
        L.log("trait_vectors"),
    benchmark:
        L.benchmark("trait_vectors")
    script:
        "../scripts/trait_vectors.py"


if TRAITS["enabled"]:
    FINAL.extend([L.stage("trait_vectors", "trait_scores.png")])
