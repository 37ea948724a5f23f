# Harm on persona jailbreaks and capability (perplexity, multiple choice) for every selected
# calibrated experiment plus the unsteered model, then the Pareto table and the recommendation.

EVAL = CFG["capping_eval"]


rule evaluate_capping:
    """Generate under each cap, judge harm, score perplexity and MC accuracy (cached per condition), recommend."""
    input:
        model=L.model_json,
        config=L.capping,
        responses=shards_of(L.shard("generate")),
        jailbreaks=shipped(EVAL["jailbreaks"], "jailbreaks"),
        harm_rubric=shipped(EVAL["harm_rubric"], "harm_rubric"),
        mc=shipped(EVAL["mc_file"], "mc_file"),
    output:
        details=L.stage("evaluate_capping", "details.parquet"),
        metrics=L.stage("evaluate_capping", "metrics.csv"),
        pareto=report(L.stage("evaluate_capping", "pareto.csv"), category="Capping", caption="../report/capping_pareto_table.rst"),
        plot=report(L.stage("evaluate_capping", "pareto.png"), category="Capping", caption="../report/capping_pareto_plot.rst"),
        recommended=L.stage("evaluate_capping", "recommended.json"),
        config=L.stage("evaluate_capping", "capping_recommended.safetensors"),
        reference=L.stage("evaluate_capping", "capping_recommended_config.pt"),
    params:
        backend=lambda w: run_backend(w.run),
        vllm=lambda w: settings(w.run)["vllm"],
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        percentiles=EVAL["percentiles"],
        n_jailbreaks=EVAL["n_jailbreaks"],
        n_mc=EVAL["n_mc"],
        mc_scoring=EVAL["mc_scoring"],
        n_perplexity=EVAL["n_perplexity"],
        generation=EVAL["generation"],
        batch_size=EVAL["batch_size"],
        judge=EVAL["judge"],
        judge_cache=lambda w: RunLayout(w.run).cache("evaluate_capping", "harm_verdicts.sqlite"),
        harm_threshold=EVAL["harm_threshold"],
        max_perplexity_increase=EVAL["max_perplexity_increase"],
        max_mc_drop=EVAL["max_mc_drop"],
        cache_dir=lambda w: RunLayout(w.run).cache("evaluate_capping", "conditions"),
        n_bootstrap=CFG["uncertainty"]["n_bootstrap"],
        confidence=CFG["uncertainty"]["confidence"],
        bootstrap_seed=CFG["uncertainty"]["seed"],
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("evaluate_capping", "mem_mb"),
        runtime=resources_of("evaluate_capping", "runtime"),
        gpu=resources_of("evaluate_capping", "gpu"),
    log:
        L.log("evaluate_capping"),
    benchmark:
        L.benchmark("evaluate_capping")
    script:
        "../scripts/evaluate_capping.py"


# only for runs whose capping is on (see common.smk)
CAPPING_FINAL.extend(
    [
        L.stage("evaluate_capping", "recommended.json"),
        L.stage("evaluate_capping", "pareto.png"),
        L.stage("evaluate_capping", "capping_recommended.safetensors"),
    ]
)
