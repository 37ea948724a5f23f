"""Activation capping: one definition, calibration, and our file format plus the reference one.

Convention used throughout this project (the paper's form): for each capped layer a *unit vector
v pointing toward the Assistant* (the normalised axis) and a *floor* ``tau``::

    h <- h + v * max(tau - <h, v>, 0)

so after the intervention ``<h, v> >= tau`` at every capped token position.

The reference project's ``capping_config.pt`` writes the same operation as a ceiling on the
*role-ward* vector ``u = -v`` with cap ``c = -tau`` (``h <- h - u * max(<h, u> - c, 0)``).
:meth:`CappingConfig.to_reference` and :meth:`CappingConfig.from_reference` convert between the two.

Two loaders, two APIs:

* :func:`load_capping_config` is the reference call: it returns the reference ``dict``
  (``config["experiments"]``, ``config["vectors"][name]["vector"]``) from a reference ``.pt`` or our
  ``.safetensors``, checked and loaded with ``weights_only=True``.
* :meth:`CappingConfig.load` is this project's: experiments of :class:`Cap` floors, the recommended
  experiment, metadata and the first-token policy.

First-token policy: the reference caps every position. This project's pipeline skips position 0
(its activation is ~100x the rest in many models, and flooring it can wreck generation) and says so
in every file it writes: metadata ``first_token`` of ``capping.safetensors`` and the extra key
``"first_token"`` (``"skip"`` or ``"cap"``) of ``capping_config.pt``, which reference code ignores.
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
from .models import default_windows  # noqa: F401  (re-exported: capping windows are a model fact, light at parse time)
from .storage import (
    InputError,
    check_tensor,
    load_safetensors,
    parse_json,
    save_safetensors,
    torch_load_safe,
    torch_save,
)

FORMAT = "assistant-axis-capping/1"
FIRST_TOKEN_KEY = "first_token"  # extra key of our reference-layout files: "skip" or "cap"
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
        """Read our ``.safetensors`` or a reference ``.pt`` (``weights_only=True``), fully checked.

        Vectors must be finite, non-zero (a zero vector would make capping a silent no-op) and
        of one length; floors finite; metadata well-formed. Problems are one-line
        :class:`~assistant_axis.storage.InputError` s naming the file and the field.
        """
        path = Path(path)
        fix = "recalibrate (the calibrate stage) to rewrite it"
        if path.suffix != ".safetensors":
            return cls.from_reference(torch_load_safe(path, fix), source=str(path))
        tensors, meta = load_safetensors(path, fix)
        if meta.get("format") != FORMAT:
            raise InputError(path, "metadata 'format'", f"is {meta.get('format')!r}, not {FORMAT!r} (not an assistant-axis capping file)", fix)
        vectors: dict[int, torch.Tensor] = {}
        for key, tensor in tensors.items():
            name, _, layer = key.partition(".")
            if name != "layer" or not layer.isdigit():
                raise InputError(path, f"tensor {key!r}", "is not named layer.<N>", fix)
            vectors[int(layer)] = check_tensor(tensor, path, key, 1, fix, nonzero=True)
        if len({v.numel() for v in vectors.values()}) > 1:
            raise InputError(path, "tensors layer.<N>", f"have different lengths {sorted({v.numel() for v in vectors.values()})}", fix)
        if "experiments" not in meta:
            raise InputError(path, "metadata 'experiments'", "is missing", fix)
        listed = parse_json(meta["experiments"], path, fix, where="metadata 'experiments'")
        if not isinstance(listed, list) or not listed:
            raise InputError(path, "metadata 'experiments'", "must be a non-empty JSON list of {'id', 'caps'}", fix)
        experiments = []
        for n, e in enumerate(listed):
            if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("caps"), dict) or not e["caps"]:
                raise InputError(path, f"metadata 'experiments'[{n}]", "must be an object with a string 'id' and a non-empty 'caps' object", fix)
            caps = []
            for layer, t in e["caps"].items():
                where = f"metadata 'experiments'[{n}].caps[{layer!r}]"
                if not str(layer).isdigit() or int(layer) not in vectors:
                    raise InputError(path, where, f"names layer {layer!r}, which has no vector in the file", fix)
                if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(float(t)):
                    raise InputError(path, where, f"floor {t!r} is not a finite number", fix)
                caps.append(Cap(int(layer), vectors[int(layer)], float(t)))
            experiments.append(CappingExperiment(e["id"], caps))
        extra = parse_json(meta.get("metadata") or "{}", path, fix, where="metadata 'metadata'")
        if not isinstance(extra, dict):
            raise InputError(path, "metadata 'metadata'", "must be a JSON object", fix)
        policy = meta.get("first_token", "skip")
        if policy not in ("skip", "cap"):
            raise InputError(path, "metadata 'first_token'", f"is {policy!r}; it must be 'skip' or 'cap'", fix)
        recommended = meta.get("recommended") or None
        if recommended is not None and recommended not in {e.id for e in experiments}:
            raise InputError(path, "metadata 'recommended'", f"names {recommended!r}, which is not one of its experiments", fix)
        return cls(experiments, meta.get("model") or None, recommended, extra, cap_first_token=policy == "cap")

    # ---- the reference layout ----
    def to_reference(self) -> dict[str, Any]:
        """The reference ``capping_config.pt`` dict (role-ward unit vectors, ceilings) plus the
        ``"first_token"`` policy key, which reference code ignores (it caps every position)."""
        vectors = {
            f"layer_{layer}": {"vector": Cap(layer, vec, 0.0).to_reference()[0], "layer": int(layer)}
            for layer, vec in sorted(self.vectors_by_layer().items())
        }
        experiments = [
            {"id": e.id, "interventions": [{"vector": f"layer_{c.layer}", "cap": c.to_reference()[1]} for c in e.caps]}
            for e in self.experiments
        ]
        return {"vectors": vectors, "experiments": experiments, FIRST_TOKEN_KEY: "cap" if self.cap_first_token else "skip"}

    def save_reference(self, path: str | os.PathLike[str]) -> None:
        torch_save(path, self.to_reference())

    @classmethod
    def from_reference(cls, data: Any, source: str = "capping config", cap_first_token: bool | None = None) -> CappingConfig:
        """Read the reference layout (checked by :func:`check_reference_capping`); caps apply to unit vectors.

        ``cap_first_token``: the first-token policy; by default the file's ``"first_token"`` key when it
        has one, else this project's policy (skip position 0). The reference itself caps every
        position: pass ``True`` to reproduce it, or use the reference call ``build_capping_steerer``.
        """
        data = check_reference_capping(data, source)
        experiments = []
        for n, exp in enumerate(data["experiments"]):
            inters = []
            for inter in exp.get("interventions", []):
                if "cap" not in inter:
                    continue
                entry = data["vectors"][inter["vector"]]
                inters.append(Cap.from_reference(int(entry["layer"]), entry["vector"], float(inter["cap"])))
            experiments.append(CappingExperiment(str(exp.get("id", n)), inters))
        if cap_first_token is None:
            cap_first_token = data.get(FIRST_TOKEN_KEY) == "cap"
        return cls(experiments, cap_first_token=cap_first_token)


def check_reference_capping(data: Any, source: str = "capping config") -> dict[str, Any]:
    """``data`` if it is a well-formed reference capping dict, else a one-line ``ValueError``.

    Checked: ``vectors`` maps names to ``{"vector": finite 1-D tensor, "layer": int}``; every
    experiment is a dict with an ``id`` and a list of ``interventions``, each naming a known vector
    and, for capping, a finite ``cap``; all vectors have one length.
    """
    fix = "expected the reference layout {'vectors': {name: {'vector', 'layer'}}, 'experiments': [{'id', 'interventions'}]}"
    if not isinstance(data, dict) or "vectors" not in data or "experiments" not in data:
        raise ValueError(f"{source}: expected a dict with 'vectors' and 'experiments' (the reference capping_config layout)")
    if not isinstance(data["vectors"], dict):
        raise ValueError(f"{source}: field 'vectors' must be a dict name -> {{'vector', 'layer'}}; {fix}")
    sizes = set()
    for name, entry in data["vectors"].items():
        if not isinstance(entry, dict) or "vector" not in entry or "layer" not in entry:
            raise ValueError(f"{source}: field vectors[{name!r}] must be a dict with 'vector' and 'layer'; {fix}")
        check_tensor(entry["vector"], source, f"vectors[{name!r}].vector", 1, fix, nonzero=True)
        if isinstance(entry["layer"], bool) or not isinstance(entry["layer"], int) or entry["layer"] < 0:
            raise ValueError(f"{source}: field vectors[{name!r}].layer must be a non-negative int, got {entry['layer']!r}")
        sizes.add(int(entry["vector"].numel()))
    if len(sizes) > 1:
        raise ValueError(f"{source}: field 'vectors' holds vectors of different lengths {sorted(sizes)}; all must be d_model")
    if not isinstance(data["experiments"], list):
        raise ValueError(f"{source}: field 'experiments' must be a list of {{'id', 'interventions'}} dicts")
    for n, exp in enumerate(data["experiments"]):
        if not isinstance(exp, dict) or "id" not in exp or not isinstance(exp.get("interventions"), list):
            raise ValueError(f"{source}: field experiments[{n}] must be a dict with 'id' and an 'interventions' list")
        for i, inter in enumerate(exp["interventions"]):
            where = f"experiments[{n}].interventions[{i}]"
            if not isinstance(inter, dict) or inter.get("vector") not in data["vectors"]:
                name = inter.get("vector") if isinstance(inter, dict) else inter
                raise ValueError(f"{source}: field {where} names vector {name!r}, which is not in 'vectors'")
            if "cap" in inter:
                cap = inter["cap"]
                if isinstance(cap, torch.Tensor) and cap.numel() == 1:
                    cap = cap.item()
                if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not np.isfinite(cap):
                    raise ValueError(f"{source}: field {where}.cap is {cap!r}; it must be a finite number (the ceiling)")
    policy = data.get(FIRST_TOKEN_KEY)
    if policy is not None and policy not in ("skip", "cap"):
        raise ValueError(f"{source}: field {FIRST_TOKEN_KEY!r} is {policy!r}; it must be 'skip' or 'cap'")
    return data


def load_capping_config(config_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reference API: the capping config as the reference ``dict`` with keys ``vectors`` and ``experiments``.

    A ``.pt`` file is loaded with ``weights_only=True`` (the reference unpickles it) and checked
    (:func:`check_reference_capping`); our ``.safetensors`` file is converted to the same layout
    (role-ward unit vectors, ceilings) plus its ``"first_token"`` policy. Pass the result to
    :func:`assistant_axis.steering.build_capping_steerer`. This project's own object with floors,
    the recommended experiment and metadata is :meth:`CappingConfig.load`.
    """
    path = Path(config_path)
    if path.suffix == ".safetensors":
        return CappingConfig.load(path).to_reference()
    return check_reference_capping(torch_load_safe(path), str(path))


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
    cap_first_token: bool = False,
) -> CappingConfig:
    """Per-layer thresholds from the spread of projections, for a grid of windows x percentiles.

    ``projections`` is ``(n_samples, layers)``: every role-play and default response mean projected
    on the unit axis at each layer. A percentile ``p`` follows the reference naming, which is taken
    in the role-ward frame: ``p0.25`` is a floor at the ``1 - 0.25 = 75``-th percentile of the
    Assistant-axis projections. ``cap_first_token`` is the policy recorded with the experiments.
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
    return CappingConfig(experiments, model=model, cap_first_token=cap_first_token)
