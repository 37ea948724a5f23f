localrules: persona_space


rule persona_space:
    """PCA of role vectors per layer, axis/PC1 cosine and axis norm per layer, the roles at both ends of the axis."""
    input:
        vectors=L.stage("role_vectors", "role_vectors.safetensors"),
        axis=L.axis,
    output:
        pca=L.stage("persona_space", "persona_space.json"),
        plot=report(L.stage("persona_space", "persona_space.png"), category="Persona space", caption="../report/persona_space.rst"),
        layers_plot=report(L.stage("persona_space", "axis_layers.png"), category="Persona space", caption="../report/axis_layers.rst"),
        extremes=report(L.stage("persona_space", "persona_extremes.csv"), category="Persona space", caption="../report/persona_extremes_table.rst"),
        extremes_plot=report(L.stage("persona_space", "persona_extremes.png"), category="Persona space", caption="../report/persona_extremes.rst"),
    params:
        target_layer=lambda w: target_layer(w.run),
        n_components=CFG["analysis"]["n_components"],
        n_extremes=CFG["analysis"]["n_extremes"],
        title=lambda w: w.run,
    log:
        L.log("persona_space"),
    benchmark:
        L.benchmark("persona_space")
    script:
        "../scripts/persona_space.py"


FINAL.extend([L.stage("persona_space", "persona_space.png"), L.stage("persona_space", "persona_extremes.png")])
