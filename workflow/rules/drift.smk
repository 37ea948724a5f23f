# Persona-drift experiment; its files are final targets only when drift.enabled.

DRIFT = CFG["drift"]


rule drift:
    """Simulated multi-turn conversations per domain; every assistant turn projected on the run's axis (finished turns cached)."""
    input:
        model=L.model_json,
        axis=L.axis,
        seeds=shipped(DRIFT["seeds_file"], "seeds_file"),
    output:
        table=report(L.stage("drift", "drift.csv"), category="Persona drift", caption="../report/drift_table.rst"),
        transcripts=L.stage("drift", "transcripts.json"),
        plot=report(L.stage("drift", "drift.png"), category="Persona drift", caption="../report/drift_plot.rst"),
    params:
        backend=lambda w: run_backend(w.run),
        vllm=lambda w: settings(w.run)["vllm"],
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        target_layer=lambda w: target_layer(w.run),
        domains=DRIFT["domains"],
        conversations_per_domain=DRIFT["conversations_per_domain"],
        turns=DRIFT["turns"],
        max_new_tokens=DRIFT["max_new_tokens"],
        user_max_new_tokens=DRIFT["user_max_new_tokens"],
        user_model=DRIFT["user_model"],
        temperature=DRIFT["temperature"],
        top_p=DRIFT["top_p"],
        seed=DRIFT["seed"],
        batch_size=CFG["batch_size"],
        title=lambda w: w.run,
        cache_dir=lambda w: RunLayout(w.run).cache("drift"),
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("drift", "mem_mb"),
        runtime=resources_of("drift", "runtime"),
        gpu=resources_of("drift", "gpu"),
    log:
        L.log("drift"),
    benchmark:
        L.benchmark("drift")
    script:
        "../scripts/drift.py"


if DRIFT["enabled"]:
    FINAL.extend([L.stage("drift", "drift.csv"), L.stage("drift", "drift.png")])
