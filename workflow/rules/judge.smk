rule judge_responses:
    """Role-adherence scores 0-3; every verdict is cached, so reruns never pay twice."""
    input:
        responses=RESULTS + "/{model}/responses/shard_{shard}.parquet",
    output:
        RESULTS + "/{model}/scores/shard_{shard}.parquet",
    params:
        roles_dir=CFG["roles_dir"],
        judge=lambda w: run_settings(w.model)["judge"],
        cache_path=lambda w: f"{RESULTS}/{w.model}/cache/judge.sqlite",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    log:
        RESULTS + "/{model}/logs/judge_{shard}.log",
    benchmark:
        RESULTS + "/{model}/benchmarks/judge_{shard}.tsv"
    script:
        "../scripts/judge_responses.py"
