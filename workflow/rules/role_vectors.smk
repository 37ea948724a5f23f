localrules: role_vectors


rule role_vectors:
    """Mean activation of each role's fully in-role responses, and of all default responses."""
    priority: AXIS_PATH_PRIORITY
    input:
        activations=shards_of(L.shard("extract")),
        scores=shards_of(L.shard("judge")),
    output:
        vectors=L.stage("role_vectors", "role_vectors.safetensors"),
        counts=report(L.stage("role_vectors", "role_counts.csv"), category="Role vectors", caption="../report/role_counts.rst"),
    params:
        score=CFG["role_vectors"]["score"],
        min_count=CFG["role_vectors"]["min_count"],
        model=lambda w: settings(w.run)["model"],
    log:
        L.log("role_vectors"),
    benchmark:
        L.benchmark("role_vectors")
    script:
        "../scripts/role_vectors.py"
