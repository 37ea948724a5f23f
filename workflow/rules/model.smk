localrules: model


rule model:
    """Resolve the model (convert the embedded GGUF to safetensors once) and record its facts in model.json."""
    output:
        L.model_json,
    params:
        spec=lambda w: settings(w.run)["model"],
        facts=lambda w: facts(w.run).as_dict(),
    log:
        L.log("model"),
    benchmark:
        L.benchmark("model")
    script:
        "../scripts/model.py"
