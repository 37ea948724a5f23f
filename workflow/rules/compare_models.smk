# Persona space across the config's runs (two or more): outputs in results/_all/compare_models/,
# the folder of what belongs to no single run (assistant_axis.pipeline.layout.ALL_RUNS).

ALL = RunLayout(ALL_RUNS)

localrules: compare_models


rule compare_models:
    """PC1-score and axis-order correlations of the common roles of every pair of runs, with intervals; layers overlaid."""
    input:
        persona_spaces=expand(L.stage("persona_space", "persona_space.json"), run=RUNS),
    output:
        table=report(ALL.stage("compare_models", "compare_models.csv"), category="Across models", caption="../report/compare_models_table.rst"),
        plot=report(ALL.stage("compare_models", "compare_models.png"), category="Across models", caption="../report/compare_models_plot.rst"),
        layers_plot=report(ALL.stage("compare_models", "layers.png"), category="Across models", caption="../report/compare_layers.rst"),
    params:
        runs=RUNS,
        n_bootstrap=CFG["uncertainty"]["n_bootstrap"],
        confidence=CFG["uncertainty"]["confidence"],
        seed=CFG["uncertainty"]["seed"],
    log:
        ALL.log("compare_models"),
    script:
        "../scripts/compare_models.py"


if CFG["compare_models"]["enabled"] and len(RUNS) >= 2:
    ALL_FINAL.extend([ALL.stage("compare_models", "compare_models.png"), ALL.stage("compare_models", "layers.png")])
