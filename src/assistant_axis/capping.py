"""Activation capping: one definition, calibration, and our file format plus the reference one.

Convention used throughout this project (the paper's form): for each capped layer a *unit vector
v pointing toward the Assistant* (the normalised axis) and a *floor* ``tau``::

    h <- h + v * max(tau - <h, v>, 0)

so after the intervention ``<h, v> >= tau`` at every capped token position.

The reference project's ``capping_config.pt`` writes the same operation as a ceiling on the
*role-ward* vector ``u = -v`` with cap ``c = -tau`` (``h <- h - u * max(<h, u> - c, 0)``).
:meth:`CappingConfig.to_reference` and :meth:`CappingConfig.from_reference` convert between the two.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .axis import EPS, unit
from .storage import save_safetensors, torch_load_safe, torch_save

FORMAT = "assistant-axis-capping/1"
_EXPERIMENT_ID = re.compile(r"^layers_(\d+):(\d+)-p([0-9.]+)$")


@dataclass
class Cap:
    """One capping intervention in this project's convention, the one object every user shares.

    The HF steerer, the vLLM worker, calibration, evaluation and both file formats all go through
    it: ``vector`` is the *unit, Assistant-ward* direction at block ``layer`` and ``floor`` the
    least projection allowed, so after :meth:`apply` ``<h, vector> >= floor`` at every capped
    position. The reference ceiling on the role-ward vector is :meth:`to_reference` /
    :meth:`from_reference`; :meth:`to_wire` / :meth:`from_wire` carry it across process boundaries
    as plain data (vLLM's RPC), so nothing is pickled.
    """

    layer: int
    vector: torch.Tensor  # unit, Assistant-ward, float32
    floor: float

    @classmethod
    def along(cls, layer: int, direction: torch.Tensor, floor: float) -> Cap:
        """A cap on ``direction`` (any length, Assistant-ward), normalised here."""
        v = direction.detach().float().cpu()
        norm = float(v.norm())
        if not norm > 0.0:
            raise ValueError(f"the capping vector of layer {layer} has no direction (norm {norm})")
        return cls(int(layer), v / (norm + EPS), float(floor))

    def apply(self, h: torch.Tensor, allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h raised to the floor, deficit)`` for ``h`` of shape ``(..., hidden)``.

        ``allowed`` (bool, ``h.shape[:-1]``) marks the positions the cap may touch; elsewhere the
        deficit is zero and ``h`` is returned unchanged. The deficit is the correction's length.
        """
        v = self.vector.to(device=h.device, dtype=h.dtype)
        deficit = (self.floor - h @ v).clamp(min=0.0)
        if allowed is not None:
            deficit = deficit * allowed
        return h + deficit.unsqueeze(-1) * v, deficit

    def to_reference(self) -> tuple[torch.Tensor, float]:
        """The reference form: ``(role-ward unit vector, ceiling)``, i.e. ``(-vector, -floor)``."""
        return (-self.vector.float()).contiguous(), -float(self.floor)

    @classmethod
    def from_reference(cls, layer: int, vector: torch.Tensor, ceiling: float) -> Cap:
        """From the reference ceiling ``<h, u> <= ceiling`` on the role-ward ``vector`` ``u`` (normalised here)."""
        u = vector.detach().float().cpu()
        return cls(int(layer), -u / (u.norm() + EPS), -float(ceiling))

    def to_wire(self) -> tuple[int, list[float], float]:
        return int(self.layer), self.vector.float().cpu().tolist(), float(self.floor)

    @classmethod
    def from_wire(cls, data: Sequence[Any], device: torch.device | str | None = None) -> Cap:
        layer, vector, floor = data
        return cls(int(layer), torch.tensor(vector, dtype=torch.float32, device=device), float(floor))


@dataclass
class CappingExperiment:
    """Caps applied together (one per layer of a window), and whether position 0 is capped too.

    ``cap_first_token`` is the first-token policy: position 0 carries a massive activation in many
    models (projections ~100x the rest), and raising it to a floor can wreck generation, so this
    project skips it unless asked.
    """

    id: str
    caps: list[Cap]
    cap_first_token: bool = False

    @property
    def layers(self) -> list[int]:
        return [c.layer for c in self.caps]


@dataclass
class CappingConfig:
    """A set of capping experiments over per-layer unit vectors (see the module docstring)."""

    experiments: list[CappingExperiment]
    model: str | None = None
    recommended: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    cap_first_token: bool = False  # the first-token policy of every experiment in the file

    def __post_init__(self) -> None:
        for exp in self.experiments:
            exp.cap_first_token = self.cap_first_token

    def get(self, experiment: str | int) -> CappingExperiment:
        if isinstance(experiment, int):
            return self.experiments[experiment]
        for exp in self.experiments:
            if exp.id == experiment:
                return exp
        known = ", ".join(e.id for e in self.experiments)
        raise KeyError(f"no capping experiment {experiment!r}; known: {known}")

    def vectors_by_layer(self) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for exp in self.experiments:
            for cap in exp.caps:
                known = out.setdefault(cap.layer, cap.vector)
                if not torch.allclose(known, cap.vector, atol=1e-6):
                    raise ValueError(f"layer {cap.layer} has two different capping vectors")
        return out

    # ---- our format: one safetensors file, vectors as tensors, experiments in its metadata ----
    def save(self, path: str | os.PathLike[str]) -> None:
        tensors = {f"layer.{layer}": vec.float() for layer, vec in self.vectors_by_layer().items()}
        meta = {
            "format": FORMAT,
            "convention": "floor: h <- h + v*max(tau - <h,v>, 0), v = unit Assistant axis",
            "first_token": "cap" if self.cap_first_token else "skip",
            "model": self.model or "",
            "recommended": self.recommended or "",
            "experiments": json.dumps(
                [{"id": e.id, "caps": {str(c.layer): c.floor for c in e.caps}} for e in self.experiments]
            ),
            "metadata": json.dumps(self.metadata),
        }
        save_safetensors(path, tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CappingConfig:
        path = Path(path)
        if path.suffix != ".safetensors":
            return cls.from_reference(torch_load_safe(path), source=str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an assistant-axis capping file (metadata 'format' is {meta.get('format')!r})")
            vectors = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys()}
        experiments = [
            CappingExperiment(e["id"], [Cap(int(layer), vectors[int(layer)], float(t)) for layer, t in e["caps"].items()])
            for e in json.loads(meta["experiments"])
        ]
        return cls(
            experiments, meta.get("model") or None, meta.get("recommended") or None, json.loads(meta.get("metadata", "{}")),
            cap_first_token=meta.get("first_token", "skip") == "cap",
        )

    # ---- the reference layout ----
    def to_reference(self) -> dict[str, Any]:
        """The reference ``capping_config.pt`` dict (role-ward unit vectors, ceilings)."""
        vectors = {
            f"layer_{layer}": {"vector": Cap(layer, vec, 0.0).to_reference()[0], "layer": int(layer)}
            for layer, vec in sorted(self.vectors_by_layer().items())
        }
        experiments = [
            {"id": e.id, "interventions": [{"vector": f"layer_{c.layer}", "cap": c.to_reference()[1]} for c in e.caps]}
            for e in self.experiments
        ]
        return {"vectors": vectors, "experiments": experiments}

    def save_reference(self, path: str | os.PathLike[str]) -> None:
        torch_save(path, self.to_reference())

    @classmethod
    def from_reference(cls, data: Any, source: str = "capping config") -> CappingConfig:
        """Read the reference layout; vectors are normalised there too, so caps apply to unit vectors."""
        if not isinstance(data, dict) or "vectors" not in data or "experiments" not in data:
            raise ValueError(f"{source}: expected a dict with 'vectors' and 'experiments' (the reference capping_config layout)")
        experiments = []
        for n, exp in enumerate(data["experiments"]):
            inters = []
            for inter in exp.get("interventions", []):
                if "cap" not in inter:
                    continue
                name = inter.get("vector")
                if name not in data["vectors"]:
                    raise ValueError(f"{source}: experiments[{n}] names vector {name!r}, which is not in 'vectors'")
                entry = data["vectors"][name]
                inters.append(Cap.from_reference(int(entry["layer"]), entry["vector"], float(inter["cap"])))
            experiments.append(CappingExperiment(str(exp.get("id", n)), inters))
        return cls(experiments)


def load_capping_config(path: str | os.PathLike[str]) -> CappingConfig:
    """Load our ``.safetensors`` capping file or a reference ``.pt`` one (safely, ``weights_only=True``)."""
    return CappingConfig.load(path)


def experiment_id(start: int, stop: int, percentile: float) -> str:
    """Reference-style id: ``layers_46:54-p0.25`` (half-open layer range, role-ward percentile)."""
    return f"layers_{start}:{stop}-p{percentile:g}"


def parse_experiment_id(exp_id: str) -> tuple[int, int, float]:
    m = _EXPERIMENT_ID.match(exp_id)
    if not m:
        raise ValueError(f"capping experiment id {exp_id!r} is not of the form layers_A:B-pP")
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def calibrate(
    projections: torch.Tensor | np.ndarray,
    axis: torch.Tensor,
    windows: Sequence[tuple[int, int]],
    percentiles: Sequence[float],
    model: str | None = None,
) -> CappingConfig:
    """Per-layer thresholds from the spread of projections, for a grid of windows x percentiles.

    ``projections`` is ``(n_samples, layers)``: every role-play and default response mean projected
    on the unit axis at each layer. A percentile ``p`` follows the reference naming, which is taken
    in the role-ward frame: ``p0.25`` is a floor at the ``1 - 0.25 = 75``-th percentile of the
    Assistant-axis projections.
    """
    proj = np.asarray(projections, dtype=np.float64)
    vectors = unit(axis.float())
    experiments = []
    for start, stop in windows:
        if not 0 <= start < stop <= axis.shape[0]:
            raise ValueError(f"capping window {start}:{stop} does not fit a model with {axis.shape[0]} layers")
        for p in percentiles:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"capping percentile {p} is not within [0, 1]")
            inters = [Cap(layer, vectors[layer], float(np.quantile(proj[:, layer], 1.0 - p))) for layer in range(start, stop)]
            experiments.append(CappingExperiment(experiment_id(start, stop, p), inters))
    return CappingConfig(experiments, model=model)


def default_windows(total_layers: int) -> list[tuple[int, int]]:
    """Three windows of about 1/8 of the depth, between 50% and 85%: where the paper's
    recommended caps sit (Qwen3-32B 46:54 of 64, Llama-3.3-70B 56:72 of 80)."""
    width = max(2, round(total_layers / 8))
    starts = sorted({round(total_layers * f) for f in (0.5, 0.6, 0.7)})
    return [(s, min(s + width, total_layers)) for s in starts if s < total_layers]
