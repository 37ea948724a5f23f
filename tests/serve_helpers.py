"""A finished run's serving files from the stored tiny run, for ``tests/test_serve.py`` and ``benchmarks/bench_serve.py``.

The axis and the capping floors are the real ones the tiny pipeline run computed for the embedded
model (``tests/data/golden``), so the server measures and caps with a genuine Assistant axis
without running the pipeline first.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from assistant_axis.axis import save_axis
from assistant_axis.capping import Cap, CappingConfig, CappingExperiment
from assistant_axis.models import DEFAULT_MODEL, describe_model, resolve_model_path

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "tiny_run.safetensors"
EXPERIMENT = "layers_14:16-p0.25"  # the window that holds the target layer (15)


def make_run(root: Path, name: str = "tiny") -> Path:
    """A finished run's serving files from the stored tiny run (real axis and floors of the embedded model)."""
    run = root / name
    with safe_open(str(GOLDEN), framework="pt") as f:
        axis = f.get_tensor("axis")
        ids = sorted(k.split(".", 1)[1] for k in f.keys() if k.startswith("floors."))
        experiments = []
        for exp in ids:
            layers, floors, vectors = (f.get_tensor(f"{k}.{exp}") for k in ("layers", "floors", "vectors"))
            experiments.append(CappingExperiment(exp, [Cap(int(la), v, float(t)) for la, t, v in zip(layers, floors, vectors)]))
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text(json.dumps({
        "spec": DEFAULT_MODEL, "path": resolve_model_path(DEFAULT_MODEL), "short_name": describe_model(DEFAULT_MODEL).short_name,
        "total_layers": int(axis.shape[0]), "target_layer": 15,
    }))
    (run / "axis").mkdir()
    save_axis(axis, run / "axis" / "axis.safetensors", {"target_layer": 15})
    (run / "calibrate").mkdir()
    CappingConfig(experiments, model=DEFAULT_MODEL, recommended=EXPERIMENT).save(run / "calibrate" / "capping.safetensors")
    return run
