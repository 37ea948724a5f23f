rule judge:
    """Role-adherence scores 0-3; every verdict is cached, so reruns never pay twice."""
    priority: AXIS_PATH_PRIORITY
    input:
        responses=L.shard("generate"),
        # the rubrics (eval_prompt) of the shard's roles: an edited rubric re-scores that shard
        roles=lambda w: role_files(roles_of(w.shard)),
    output:
        L.shard("judge"),
    params:
        roles_dir=CFG["roles_dir"],
        judge=lambda w: settings(w.run)["judge"],
        cache_path=lambda w: RunLayout(w.run).cache("judge", "verdicts.sqlite"),
    threads: 1
    resources:
        mem_mb=resources_of("judge", "mem_mb"),
        runtime=resources_of("judge", "runtime"),
    log:
        L.log("judge", "{shard}"),
    benchmark:
        L.benchmark("judge", "{shard}")
    script:
        "../scripts/judge.py"
