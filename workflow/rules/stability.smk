# Bootstrap over responses: how many responses per role the axis needs (stability.enabled).

localrules: stability


rule stability:
    """Rebuild the target layer's axis from redrawn responses per role; cosine and role-order correlation with the full run's."""
    input:
        activations=shards_of(L.shard("extract")),
        scores=shards_of(L.shard("judge")),
    output:
        table=report(L.stage("stability", "stability.csv"), category="Stability", caption="../report/stability_table.rst"),
        plot=report(L.stage("stability", "stability.png"), category="Stability", caption="../report/stability_plot.rst"),
    params:
        target_layer=lambda w: target_layer(w.run),
        score=CFG["role_vectors"]["score"],
        min_count=CFG["role_vectors"]["min_count"],
        n_bootstrap=CFG["stability"]["n_bootstrap"],
        sizes=CFG["stability"]["sizes"],
        confidence=CFG["uncertainty"]["confidence"],
        seed=CFG["uncertainty"]["seed"],
        title=lambda w: w.run,
    log:
        L.log("stability"),
    benchmark:
        L.benchmark("stability")
    script:
        "../scripts/stability.py"


if CFG["stability"]["enabled"]:
    FINAL.append(L.stage("stability", "stability.png"))
