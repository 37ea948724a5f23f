localrules: calibrate


rule calibrate:
    """Per-layer floors at percentiles of all role-play and default projections, for a grid of windows."""
    input:
        activations=shards_of(L.shard("extract")),
        axis=L.axis,
    output:
        config=L.capping,
        reference=L.stage("calibrate", "capping_config.pt"),
        table=report(L.stage("calibrate", "calibration.csv"), category="Capping", caption="../report/calibrate_table.rst"),
        plot=report(L.stage("calibrate", "calibration.png"), category="Capping", caption="../report/calibrate_plot.rst"),
    params:
        windows=lambda w: capping_windows(w.run),
        percentiles=lambda w: settings(w.run)["capping"]["percentiles"],
        cap_first_token=lambda w: settings(w.run)["capping"]["cap_first_token"],
        target_layer=lambda w: target_layer(w.run),
        model=lambda w: settings(w.run)["model"],
    log:
        L.log("calibrate"),
    benchmark:
        L.benchmark("calibrate")
    script:
        "../scripts/calibrate.py"


# only for runs whose capping is on (see common.smk)
CAPPING_FINAL.extend([L.stage("calibrate", "capping_config.pt"), L.stage("calibrate", "calibration.png")])
