localrules: role_vectors, compute_axis, persona_space, calibrate_capping


rule role_vectors:
    """Mean activation of each role's fully in-role responses, and of all default responses."""
    input:
        activations=lambda w: expand(RESULTS + "/{model}/activations/shard_{shard}.parquet", model=w.model, shard=SHARDS),
        scores=lambda w: expand(RESULTS + "/{model}/scores/shard_{shard}.parquet", model=w.model, shard=SHARDS),
    output:
        vectors=RESULTS + "/{model}/role_vectors.safetensors",
        counts=report(RESULTS + "/{model}/role_counts.csv", category="Role vectors", caption="../report/role_counts.rst"),
    params:
        score=CFG["role_vectors"]["score"],
        min_count=CFG["role_vectors"]["min_count"],
        model=lambda w: run_settings(w.model)["model"],
    log:
        RESULTS + "/{model}/logs/role_vectors.log",
    script:
        "../scripts/role_vectors.py"


rule compute_axis:
    """axis[L] = mean(default) - mean(role vectors), in safetensors and the reference axis.pt."""
    input:
        vectors=RESULTS + "/{model}/role_vectors.safetensors",
    output:
        axis=RESULTS + "/{model}/axis.safetensors",
        axis_pt=RESULTS + "/{model}/axis.pt",
    params:
        model=lambda w: run_settings(w.model)["model"],
    log:
        RESULTS + "/{model}/logs/axis.log",
    script:
        "../scripts/compute_axis.py"


rule persona_space:
    """PCA of role vectors per layer, axis/PC1 cosine and axis norm per layer, with plots."""
    input:
        vectors=RESULTS + "/{model}/role_vectors.safetensors",
        axis=RESULTS + "/{model}/axis.safetensors",
    output:
        pca=RESULTS + "/{model}/persona_space.json",
        plot=report(RESULTS + "/{model}/plots/persona_space.png", category="Persona space", caption="../report/persona_space.rst"),
        layers_plot=report(RESULTS + "/{model}/plots/axis_layers.png", category="Persona space", caption="../report/axis_layers.rst"),
    params:
        target_layer=lambda w: model_info(w.model)["target_layer"],
        n_components=CFG["analysis"]["n_components"],
        model=lambda w: w.model,
    log:
        RESULTS + "/{model}/logs/persona_space.log",
    script:
        "../scripts/persona_space.py"


rule calibrate_capping:
    """Per-layer floors at percentiles of all role-play and default projections, for a grid of windows."""
    input:
        activations=lambda w: expand(RESULTS + "/{model}/activations/shard_{shard}.parquet", model=w.model, shard=SHARDS),
        axis=RESULTS + "/{model}/axis.safetensors",
    output:
        config=RESULTS + "/{model}/capping.safetensors",
        reference=RESULTS + "/{model}/capping_config.pt",
        table=report(RESULTS + "/{model}/capping_calibration.csv", category="Capping", caption="../report/capping_table.rst"),
        plot=report(RESULTS + "/{model}/plots/capping_calibration.png", category="Capping", caption="../report/capping_plot.rst"),
    params:
        windows=lambda w: capping_windows(w.model),
        percentiles=lambda w: run_settings(w.model)["capping"]["percentiles"],
        target_layer=lambda w: model_info(w.model)["target_layer"],
        model=lambda w: run_settings(w.model)["model"],
    log:
        RESULTS + "/{model}/logs/calibrate_capping.log",
    script:
        "../scripts/calibrate_capping.py"
