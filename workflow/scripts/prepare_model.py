"""Resolve (and for embedded models convert once) the model, then record its description."""

from assistant_axis.models import resolve_model_path
from assistant_axis.pipeline.runner import run_stage
from assistant_axis.storage import write_json


def prepare(spec: str, info: dict, output: str) -> None:
    write_json(output, {**info, "spec": spec, "path": resolve_model_path(spec)})


run_stage(snakemake, prepare, spec=snakemake.params.spec, info=dict(snakemake.params.info), output=snakemake.output[0])  # noqa: F821
