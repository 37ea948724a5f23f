# Drift experiment (issue: monitoring) and the persona-extremes report figure.
# Both append their final files to EXTRA_TARGETS; the drift experiment only when drift.enabled.

DRIFT = CFG["drift"]

localrules: persona_extremes

EXTRA_TARGETS.extend(expand(RESULTS + "/{model}/plots/persona_extremes.png", model=MODELS))
if DRIFT["enabled"]:
    EXTRA_TARGETS.extend(expand(RESULTS + "/{model}/drift/drift.csv", model=MODELS))
    EXTRA_TARGETS.extend(expand(RESULTS + "/{model}/plots/drift.png", model=MODELS))


rule drift:
    """Simulated multi-turn conversations per domain; every assistant turn projected on the run's axis."""
    input:
        model=RESULTS + "/{model}/model.json",
        axis=RESULTS + "/{model}/axis.safetensors",
        seeds=DRIFT["seeds_file"],
    output:
        table=report(RESULTS + "/{model}/drift/drift.csv", category="Persona drift", caption="../report/drift_table.rst"),
        transcripts=RESULTS + "/{model}/drift/transcripts.json",
        plot=report(RESULTS + "/{model}/plots/drift.png", category="Persona drift", caption="../report/drift_plot.rst"),
    params:
        model=lambda w: run_settings(w.model)["model"],
        dtype=lambda w: run_settings(w.model)["dtype"],
        device=lambda w: run_settings(w.model)["device"],
        target_layer=lambda w: model_info(w.model)["target_layer"],
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
        title=lambda w: w.model,
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    log:
        RESULTS + "/{model}/logs/drift.log",
    benchmark:
        RESULTS + "/{model}/benchmarks/drift.tsv"
    script:
        "../scripts/drift.py"


rule persona_extremes:
    """Bar chart and table of the roles most and least aligned with the Assistant axis."""
    input:
        pca=RESULTS + "/{model}/persona_space.json",
    output:
        table=report(RESULTS + "/{model}/persona_extremes.csv", category="Persona space", caption="../report/persona_extremes_table.rst"),
        plot=report(RESULTS + "/{model}/plots/persona_extremes.png", category="Persona space", caption="../report/persona_extremes.rst"),
    params:
        n=CFG["analysis"]["n_extremes"],
        title=lambda w: w.model,
    log:
        RESULTS + "/{model}/logs/persona_extremes.log",
    script:
        "../scripts/persona_extremes.py"
