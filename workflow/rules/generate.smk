rule prepare_model:
    """Resolve the model (convert the embedded GGUF to safetensors once) and record what it is."""
    output:
        RESULTS + "/{model}/model.json",
    params:
        spec=lambda w: run_settings(w.model)["model"],
        info=lambda w: model_info(w.model),
    log:
        RESULTS + "/{model}/logs/prepare_model.log",
    script:
        "../scripts/prepare_model.py"


rule generate_responses:
    """One job per shard of roles: the model is loaded once; finished role groups are cached."""
    input:
        model=RESULTS + "/{model}/model.json",
    output:
        RESULTS + "/{model}/responses/shard_{shard}.parquet",
    params:
        roles_dir=CFG["roles_dir"],
        questions_file=CFG["questions_file"],
        roles=lambda w: roles_of(w.shard),
        model=lambda w: run_settings(w.model)["model"],
        short_name=lambda w: model_info(w.model)["short_name"],
        backend=lambda w: run_settings(w.model)["backend"],
        dtype=lambda w: run_settings(w.model)["dtype"],
        device=lambda w: run_settings(w.model)["device"],
        n_prompts=CFG["prompts_per_role"],
        n_default_prompts=CFG["default_prompts"],
        n_questions=CFG["questions_per_role"],
        generation=lambda w: run_settings(w.model)["generation"],
        batch_size=CFG["batch_size"],
        vllm=lambda w: run_settings(w.model)["vllm"],
        cache_dir=lambda w: f"{RESULTS}/{w.model}/cache/responses",
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda w: 1 if run_settings(w.model)["backend"] == "vllm" and run_settings(w.model)["device"] != "cpu" else 0,
    log:
        RESULTS + "/{model}/logs/generate_{shard}.log",
    benchmark:
        RESULTS + "/{model}/benchmarks/generate_{shard}.tsv"
    script:
        "../scripts/generate_responses.py"
