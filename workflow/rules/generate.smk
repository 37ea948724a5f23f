rule generate:
    """One job per shard of roles: the model is loaded once; finished role groups are cached.

    The shard's role files and the questions file are inputs: an edit reruns the shards that read
    it (the cache then regenerates only the role groups whose prompts changed); a touch without a
    change reruns nothing (Snakemake compares the checksums of inputs under 1 MB)."""
    priority: AXIS_PATH_PRIORITY
    input:
        model=L.model_json,
        roles=lambda w: role_files(roles_of(w.shard)),
        questions=CFG["questions_file"],
    output:
        L.shard("generate"),
    params:
        roles_dir=CFG["roles_dir"],
        questions_file=CFG["questions_file"],
        roles=lambda w: roles_of(w.shard),
        backend=lambda w: run_backend(w.run),
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        n_prompts=CFG["prompts_per_role"],
        n_default_prompts=CFG["default_prompts"],
        n_questions=CFG["questions_per_role"],
        generation=lambda w: settings(w.run)["generation"],
        batch_size=CFG["batch_size"],
        vllm=lambda w: settings(w.run)["vllm"],
        cache_dir=lambda w: RunLayout(w.run).cache("generate"),
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("generate", "mem_mb"),
        runtime=resources_of("generate", "runtime"),
        gpu=resources_of("generate", "gpu"),
    log:
        L.log("generate", "{shard}"),
    benchmark:
        L.benchmark("generate", "{shard}")
    script:
        "../scripts/generate.py"
