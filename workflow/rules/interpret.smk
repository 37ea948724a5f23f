# What the axis and the top PCs mean, through the trait vectors (runs with trait_vectors.enabled).

localrules: interpret


rule interpret:
    """Cosine of the axis and the top PCs with every trait vector at the target layer; the ends of the axis and of PC1."""
    input:
        traits=L.stage("trait_vectors", "trait_vectors.safetensors"),
        axis=L.axis,
        vectors=L.stage("role_vectors", "role_vectors.safetensors"),
    output:
        alignment=report(L.stage("interpret", "trait_alignment.csv"), category="Traits", caption="../report/trait_alignment.rst"),
        axis_plot=report(L.stage("interpret", "axis_traits.png"), category="Traits", caption="../report/axis_traits.rst"),
        pcs_plot=report(L.stage("interpret", "pc_traits.png"), category="Traits", caption="../report/pc_traits.rst"),
        ends=L.stage("interpret", "pc1_ends.csv"),
        ends_plot=report(L.stage("interpret", "pc1_ends.png"), category="Traits", caption="../report/pc1_ends.rst"),
    params:
        target_layer=lambda w: target_layer(w.run),
        n_components=CFG["interpret"]["n_components"],
        n_traits=CFG["interpret"]["n_traits"],
        title=lambda w: w.run,
    log:
        L.log("interpret"),
    script:
        "../scripts/interpret.py"


if CFG["trait_vectors"]["enabled"]:
    FINAL.extend([L.stage("interpret", "axis_traits.png"), L.stage("interpret", "pc1_ends.png")])
