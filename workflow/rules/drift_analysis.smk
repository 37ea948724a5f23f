# Drift prediction from the user's message (ridge regression) and per-domain drift with intervals
# (drift_analysis.enabled, which needs drift.enabled).

DRIFT_ANALYSIS = CFG["drift_analysis"]


rule drift_analysis:
    """Embed each turn's user message, cross-validate ridge regressions to the next projection and its change; domain drift."""
    input:
        model=L.model_json,
        table=L.stage("drift", "drift.csv"),
        transcripts=L.stage("drift", "transcripts.json"),
    output:
        prediction=report(L.stage("drift_analysis", "drift_prediction.csv"), category="Persona drift", caption="../report/drift_prediction_table.rst"),
        predictions=L.stage("drift_analysis", "predictions.csv"),
        prediction_plot=report(L.stage("drift_analysis", "drift_prediction.png"), category="Persona drift", caption="../report/drift_prediction_plot.rst"),
        domains=L.stage("drift_analysis", "domain_drift.csv"),
        domains_plot=report(L.stage("drift_analysis", "domain_drift.png"), category="Persona drift", caption="../report/domain_drift.rst"),
    params:
        embedding_model=DRIFT_ANALYSIS["embedding_model"],
        embedding_layer=DRIFT_ANALYSIS["embedding_layer"],
        alphas=DRIFT_ANALYSIS["alphas"],
        folds=DRIFT_ANALYSIS["folds"],
        dtype=lambda w: settings(w.run)["dtype"],
        device=lambda w: hf_device(w.run),
        target_layer=lambda w: target_layer(w.run),
        n_bootstrap=CFG["uncertainty"]["n_bootstrap"],
        confidence=CFG["uncertainty"]["confidence"],
        seed=CFG["uncertainty"]["seed"],
        title=lambda w: w.run,
    threads: CFG["threads"]
    resources:
        mem_mb=resources_of("drift_analysis", "mem_mb"),
        runtime=resources_of("drift_analysis", "runtime"),
        gpu=resources_of("drift_analysis", "gpu"),
    log:
        L.log("drift_analysis"),
    benchmark:
        L.benchmark("drift_analysis")
    script:
        "../scripts/drift_analysis.py"


if DRIFT_ANALYSIS["enabled"] and CFG["drift"]["enabled"]:
    FINAL.extend([L.stage("drift_analysis", "drift_prediction.png"), L.stage("drift_analysis", "domain_drift.png")])
