rule extract:
    """Mean response activations of every layer (forward hooks), one Parquet row per response."""
    input:
        model=L.model_json,
        responses=L.shard("generate"),
    output:
        L.shard("extract"),
    params:
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: settings(w.run)["device"],
        batch_size=CFG["extraction"]["batch_size"],
        max_batch_tokens=CFG["extraction"]["max_batch_tokens"],
        cache_dir=lambda w: RunLayout(w.run).cache("extract"),
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda w: uses_gpu(w.run),
    log:
        L.log("extract", "{shard}"),
    benchmark:
        L.benchmark("extract", "{shard}")
    script:
        "../scripts/extract.py"
