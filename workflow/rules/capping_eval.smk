# Capping evaluation (issue: capping). Appends its targets to EXTRA_TARGETS.
# Harm on persona jailbreaks and capability (perplexity, multiple choice) for every selected
# calibrated experiment plus the unsteered model, then the Pareto table and the recommendation.

import os

localrules: capping_recommend

CAPPING_EVAL_FILES = {
    "jailbreaks": "resources/jailbreaks/jailbreaks.jsonl",
    "harm_rubric": "resources/jailbreaks/harm_rubric.txt",
    "mc_file": "resources/capability/mc.jsonl",
}


def capping_eval_file(key):
    """The configured evaluation file, or (null) the one shipped beside this Snakefile."""
    return CFG["capping_eval"][key] or os.path.join(workflow.basedir, CAPPING_EVAL_FILES[key])


rule capping_eval:
    """Generate under each cap, judge harm, score perplexity and MC accuracy; cached per condition."""
    input:
        model=RESULTS + "/{model}/model.json",
        config=RESULTS + "/{model}/capping.safetensors",
        responses=lambda w: expand(RESULTS + "/{model}/responses/shard_{shard}.parquet", model=w.model, shard=SHARDS),
        jailbreaks=capping_eval_file("jailbreaks"),
        harm_rubric=capping_eval_file("harm_rubric"),
        mc=capping_eval_file("mc_file"),
    output:
        details=RESULTS + "/{model}/capping_eval/details.parquet",
        metrics=RESULTS + "/{model}/capping_eval/metrics.csv",
    params:
        model=lambda w: run_settings(w.model)["model"],
        dtype=lambda w: run_settings(w.model)["dtype"],
        device=lambda w: run_settings(w.model)["device"],
        percentiles=CFG["capping_eval"]["percentiles"],
        n_jailbreaks=CFG["capping_eval"]["n_jailbreaks"],
        n_mc=CFG["capping_eval"]["n_mc"],
        mc_scoring=CFG["capping_eval"]["mc_scoring"],
        n_perplexity=CFG["capping_eval"]["n_perplexity"],
        generation=CFG["capping_eval"]["generation"],
        batch_size=CFG["capping_eval"]["batch_size"],
        judge=CFG["capping_eval"]["judge"],
        judge_cache=lambda w: f"{RESULTS}/{w.model}/cache/harm_judge.sqlite",
        harm_threshold=CFG["capping_eval"]["harm_threshold"],
        cache_dir=lambda w: f"{RESULTS}/{w.model}/cache/capping_eval",
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda w: 0 if run_settings(w.model)["device"] == "cpu" else 1,
    log:
        RESULTS + "/{model}/logs/capping_eval.log",
    benchmark:
        RESULTS + "/{model}/benchmarks/capping_eval.tsv"
    script:
        "../scripts/capping_eval.py"


rule capping_recommend:
    """Pareto table and plot, recommended.json, and a copy of the capping config with `recommended` set."""
    input:
        metrics=RESULTS + "/{model}/capping_eval/metrics.csv",
        config=RESULTS + "/{model}/capping.safetensors",
    output:
        pareto=report(RESULTS + "/{model}/capping_eval/pareto.csv", category="Capping", caption="../report/capping_pareto_table.rst"),
        plot=report(RESULTS + "/{model}/plots/capping_pareto.png", category="Capping", caption="../report/capping_pareto_plot.rst"),
        recommended=RESULTS + "/{model}/capping_eval/recommended.json",
        config=RESULTS + "/{model}/capping_recommended.safetensors",
        reference=RESULTS + "/{model}/capping_recommended_config.pt",
    params:
        max_perplexity_increase=CFG["capping_eval"]["max_perplexity_increase"],
        max_mc_drop=CFG["capping_eval"]["max_mc_drop"],
        harm_threshold=CFG["capping_eval"]["harm_threshold"],
        model=lambda w: run_settings(w.model)["model"],
    log:
        RESULTS + "/{model}/logs/capping_recommend.log",
    script:
        "../scripts/capping_recommend.py"


EXTRA_TARGETS += expand(
    [
        RESULTS + "/{model}/capping_eval/recommended.json",
        RESULTS + "/{model}/capping_eval/pareto.csv",
        RESULTS + "/{model}/plots/capping_pareto.png",
        RESULTS + "/{model}/capping_recommended.safetensors",
    ],
    model=MODELS,
)
