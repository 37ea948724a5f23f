from assistant_axis.pipeline.drift_analysis import drift_analysis
from assistant_axis.pipeline.runner import run_stage

sm = snakemake  # noqa: F821
p = sm.params
run_stage(
    sm,
    drift_analysis,
    drift_csv=sm.input.table,
    transcripts=sm.input.transcripts,
    model_json=sm.input.model,
    embedding_model=p.embedding_model,
    embedding_layer=p.embedding_layer,
    dtype=p.dtype,
    device=p.device,
    alphas=list(p.alphas),
    folds=p.folds,
    n_bootstrap=p.n_bootstrap,
    confidence=p.confidence,
    seed=p.seed,
    target_layer=p.target_layer,
    prediction_out=sm.output.prediction,
    predictions_out=sm.output.predictions,
    prediction_plot=sm.output.prediction_plot,
    domains_out=sm.output.domains,
    domains_plot=sm.output.domains_plot,
    title=p.title,
)
