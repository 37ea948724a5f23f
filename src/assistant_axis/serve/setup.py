"""What a server serves: the model, the axis and its layer, the capping experiments and the drift threshold.

Why one place: ``--run results/<run>`` and the explicit ``--model/--axis/--capping`` flags must end
in the same facts, and a finished run missing a file must be one line naming that file, before any
model is loaded. The threshold of ``capping: "auto"`` and the range the page draws come from the
calibration: the floors the capping file holds at the target layer (a floor is a percentile of
the projections of every role-play and default response, see :func:`assistant_axis.capping.calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..axis import load_axis, unit
from ..capping import CappingConfig
from ..models import DEFAULT_MODEL, describe_model
from ..pipeline.layout import RunLayout
from ..pipeline.model import read_model_json

AUTO = "auto"
OFF = "off"


class SetupError(ValueError):
    """The server cannot start: one line naming the file or flag and the fix."""


@dataclass
class ServeSetup:
    """Everything the server needs besides the engine."""

    model: str  # model spec (what the engine loads)
    model_id: str  # the name /v1/models lists and replies carry
    axis: torch.Tensor  # (layers, hidden), float32
    layer: int  # target layer: projections are measured there
    capping: CappingConfig | None = None
    default_experiment: str | None = None  # what capping "on"/"auto" applies
    threshold: float | None = None  # auto capping switches on below this turn mean
    calibrated: dict[str, float] = field(default_factory=dict)  # label -> projection at the target layer

    @property
    def direction(self) -> torch.Tensor:
        """Unit axis at the target layer (the probe every projection uses)."""
        return unit(self.axis[self.layer].float())

    @property
    def experiments(self) -> list[str]:
        return [e.id for e in self.capping.experiments] if self.capping else []

    def describe(self) -> dict[str, object]:
        """The facts the page and ``GET /v1/models`` show."""
        return {
            "model": self.model_id,
            "layer": self.layer,
            "experiments": self.experiments,
            "default_experiment": self.default_experiment,
            "threshold": self.threshold,
            "calibrated": self.calibrated,
        }


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SetupError(f"{path}: missing ({what}); finish the run (snakemake) or pass the file explicitly")
    return path


def _target_floors(config: CappingConfig, layer: int) -> dict[str, float]:
    """Floors at ``layer`` by percentile label (``p0.25`` = the 75th percentile of projections)."""
    out: dict[str, float] = {}
    for exp in config.experiments:
        for cap in exp.caps:
            if cap.layer == layer and math.isfinite(cap.floor):
                label = exp.id.rsplit("-", 1)[-1] if "-p" in exp.id else exp.id
                out.setdefault(label, float(cap.floor))
    return out


def load_setup(
    *, run: str | None = None, results_dir: str = "results", model: str | None = None, axis: str | None = None,
    capping: str | None = None, layer: int | None = None, experiment: str | None = None,
    threshold: float | None = None,
) -> ServeSetup:
    """Resolve ``--run`` or the explicit files into a :class:`ServeSetup` (no model is loaded)."""
    if run is not None and axis is not None:
        raise SetupError("give --run or --axis, not both (--model and --capping may override a run's)")
    if run is None and axis is None:
        raise SetupError("give --run results/<run> (a finished pipeline run) or --axis FILE")
    cap_path: Path | None = Path(capping) if capping else None
    if run is not None:
        folder = Path(run)
        layout = RunLayout(folder.name, str(folder.parent)) if folder.is_dir() else RunLayout(run, results_dir)
        facts = read_model_json(_need(Path(layout.model_json), "the model stage's facts"))
        axis_path = _need(Path(layout.axis), "the axis stage's output")
        spec = model or str(facts["spec"])
        target = int(facts["target_layer"]) if layer is None else layer
        if cap_path is None:
            recommended = Path(layout.stage("evaluate_capping", "capping_recommended.safetensors"))
            cap_path = recommended if recommended.is_file() else _need(Path(layout.capping), "the calibrate stage's capping file")
    else:
        axis_path = Path(axis)  # type: ignore[arg-type]
        if not axis_path.is_file():
            raise SetupError(f"{axis_path}: no such axis file (--axis)")
        spec = model or DEFAULT_MODEL
        target = layer if layer is not None else describe_model(spec).target_layer
    vectors = load_axis(axis_path).float()
    if not 0 <= target < vectors.shape[0]:
        raise SetupError(f"--layer {target} is outside the axis's {vectors.shape[0]} layers ({axis_path})")
    setup = ServeSetup(spec, spec.split("/")[-1].removeprefix("embedded:"), vectors, target)
    if cap_path is not None:
        if not cap_path.is_file():
            raise SetupError(f"{cap_path}: no such capping file (--capping)")
        config = CappingConfig.load(cap_path)
        if not config.experiments:
            raise SetupError(f"{cap_path}: holds no capping experiment")
        chosen = experiment or config.recommended or config.experiments[0].id
        try:
            config.get(chosen)
        except KeyError as exc:
            raise SetupError(f"--experiment: {exc.args[0]}") from None
        setup.capping, setup.default_experiment = config, chosen
        setup.calibrated = _target_floors(config, target)
        floors = {c.layer: c.floor for c in config.get(chosen).caps}
        if target in floors:
            setup.threshold = float(floors[target])
        elif setup.calibrated:
            setup.threshold = max(setup.calibrated.values())
    if threshold is not None:
        setup.threshold = float(threshold)
    return setup
