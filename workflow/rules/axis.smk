localrules: axis


rule axis:
    """axis[L] = mean(default) - mean(role vectors), in safetensors and the reference axis.pt."""
    priority: AXIS_PATH_PRIORITY
    input:
        vectors=L.stage("role_vectors", "role_vectors.safetensors"),
    output:
        axis=L.axis,
        axis_pt=L.stage("axis", "axis.pt"),
    params:
        model=lambda w: settings(w.run)["model"],
        target_layer=lambda w: target_layer(w.run),
    log:
        L.log("axis"),
    benchmark:
        L.benchmark("axis")
    script:
        "../scripts/axis.py"


FINAL.append(L.stage("axis", "axis.pt"))
