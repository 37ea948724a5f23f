"""Stage ``model``: resolve the model once (the embedded GGUF is converted to safetensors) and record its facts.

``model/model.json`` is the one source of model facts for every later script: the path the
weights load from, the short name that fills ``{model_name}`` in role prompts, the number of
layers, the hidden size and the model's default target layer. The facts come from
:func:`assistant_axis.models.describe_model` (built-in table or ``config.json``, never weights);
the Snakefile calls the same function at parse time to check the config against the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models import resolve_model_path
from ..storage import write_json

REQUIRED = ("spec", "path", "short_name", "total_layers", "target_layer")


def prepare_model(*, spec: str, facts: dict[str, Any], output: str) -> None:
    """Write ``model.json``: the facts plus the spec and the local path of the weights."""
    write_json(output, {**facts, "spec": spec, "path": resolve_model_path(spec)})


def read_model_json(path: str | Path) -> dict[str, Any]:
    """The facts written by :func:`prepare_model`; a missing field is an error naming the file."""
    path = Path(path)
    try:
        facts = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: missing; run the pipeline's model stage first (snakemake)") from exc
    missing = [key for key in REQUIRED if key not in facts]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}; delete it and rerun the model stage")
    return facts
