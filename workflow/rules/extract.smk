rule extract:
    """Mean response activations of every layer (forward hooks), one Parquet row per response."""
    priority: AXIS_PATH_PRIORITY
    input:
        model=L.model_json,
        responses=L.shard("generate"),
    output:
        L.shard("extract"),
    params:
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        batch_size=lambda w: settings(w.run)["extraction"]["batch_size"],
        max_batch_tokens=lambda w: settings(w.run)["extraction"]["max_batch_tokens"],
        storage_dtype=lambda w: settings(w.run)["extraction"]["storage_dtype"],
        layers=lambda w: settings(w.run)["extraction"]["layers"],
        cache_dir=lambda w: RunLayout(w.run).cache("extract"),
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("extract", "mem_mb"),
        runtime=resources_of("extract", "runtime"),
        gpu=resources_of("extract", "gpu"),
    log:
        L.log("extract", "{shard}"),
    benchmark:
        L.benchmark("extract", "{shard}")
    script:
        "../scripts/extract.py"
