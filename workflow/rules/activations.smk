rule extract_activations:
    """Mean response activations of every layer (forward hooks), one Parquet row per response."""
    input:
        model=RESULTS + "/{model}/model.json",
        responses=RESULTS + "/{model}/responses/shard_{shard}.parquet",
    output:
        RESULTS + "/{model}/activations/shard_{shard}.parquet",
    params:
        model=lambda w: run_settings(w.model)["model"],
        dtype=lambda w: run_settings(w.model)["dtype"],
        device=lambda w: run_settings(w.model)["device"],
        batch_size=CFG["extraction"]["batch_size"],
        max_batch_tokens=CFG["extraction"]["max_batch_tokens"],
        cache_dir=lambda w: f"{RESULTS}/{w.model}/cache/activations",
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda w: 0 if run_settings(w.model)["device"] == "cpu" else 1,
    log:
        RESULTS + "/{model}/logs/extract_{shard}.log",
    benchmark:
        RESULTS + "/{model}/benchmarks/extract_{shard}.tsv"
    script:
        "../scripts/extract_activations.py"
