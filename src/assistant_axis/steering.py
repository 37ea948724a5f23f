"""Steer a HF model: addition, ablation, mean-ablation and capping at many layers at once.

The intervention acts on the output of decoder blocks (the residual stream, layer convention of
:mod:`assistant_axis.layers`). ``ActivationSteering`` keeps the reference project's signature and
meaning; capping there is the reference *ceiling* on the given vector, which is the same operation
as this project's floor on the negated vector (see :mod:`assistant_axis.capping`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .axis import unit
from .capping import Cap, CappingConfig, CappingExperiment
from .layers import check_layer_indices, get_layers

INTERVENTIONS = ("addition", "ablation", "mean_ablation", "capping")


@dataclass
class _Op:
    kind: str
    vector: torch.Tensor  # as given (addition) or unit (others); unused by capping
    coeff: float = 1.0
    cap: Cap | None = None  # capping: the floor in this project's convention
    mean: torch.Tensor | None = None


@dataclass
class CapTelemetry:
    """How often a cap acted: token positions seen and capped, and the summed correction size."""

    tokens: int = 0
    capped: int = 0
    correction_sum: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "tokens": self.tokens,
            "capped": self.capped,
            "mean_correction": self.correction_sum / self.capped if self.capped else 0.0,
        }


def _as_list(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} steering vectors")
        return list(value)
    return [value] * n


class ActivationSteering:
    """Context manager that installs forward hooks and removes them on exit.

    ``positions``: ``"all"`` or ``"last"`` (the last position of each forward call, i.e. the newest
    token while generating). ``cap_first_token``: whether capping also touches absolute position 0.
    It is off by default because the first token carries a massive activation in many models
    (projections ~100x the rest), and flooring it can wreck generation.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        steering_vectors: Sequence[torch.Tensor] | torch.Tensor,
        coefficients: float | Sequence[float] = 1.0,
        layer_indices: int | Sequence[int] = 0,
        intervention_type: str = "addition",
        positions: str = "all",
        mean_activations: torch.Tensor | Sequence[torch.Tensor] | None = None,
        cap_thresholds: float | Sequence[float] | None = None,
        layers_path: str | None = None,
        cap_first_token: bool = False,
    ) -> None:
        if intervention_type not in INTERVENTIONS:
            raise ValueError(f"intervention_type must be one of {INTERVENTIONS}, got {intervention_type!r}")
        if positions not in ("all", "last"):
            raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
        vectors = [steering_vectors] if isinstance(steering_vectors, torch.Tensor) and steering_vectors.ndim == 1 else list(steering_vectors)
        n = len(vectors)
        layers = _as_list(layer_indices, n, "layer_indices")
        coeffs = _as_list(coefficients, n, "coefficients")
        self.model = model
        self.positions = positions
        self.cap_first_token = cap_first_token
        self._blocks = get_layers(model, layers_path)
        layers = check_layer_indices([int(x) for x in layers], len(self._blocks))
        self._ops: dict[int, list[_Op]] = defaultdict(list)
        if intervention_type == "capping" and cap_thresholds is None:
            raise ValueError("cap_thresholds is required when intervention_type='capping'")
        if intervention_type == "mean_ablation" and mean_activations is None:
            raise ValueError("mean_activations is required when intervention_type='mean_ablation'")
        taus = _as_list(cap_thresholds, n, "cap_thresholds") if cap_thresholds is not None else [0.0] * n
        means = (
            [mean_activations] * n if isinstance(mean_activations, torch.Tensor) and mean_activations.ndim == 1
            else _as_list(mean_activations, n, "mean_activations")
        )
        for vec, layer, coeff, tau, mean in zip(vectors, layers, coeffs, taus, means):
            vec = vec.detach().float()
            if intervention_type == "addition":
                op = _Op("addition", vec, float(coeff))
            elif intervention_type == "capping":
                # reference ceiling on v at tau == our floor on -v at -tau
                op = _Op("capping", vec, cap=Cap.from_reference(layer, vec, float(tau)))
            else:
                op = _Op(intervention_type, unit(vec), float(coeff), mean=None if mean is None else mean.detach().float())
            self._ops[layer].append(op)
        self.telemetry: dict[int, CapTelemetry] = {layer: CapTelemetry() for layer, ops in self._ops.items() if any(o.kind == "capping" for o in ops)}
        self._handles: list[Any] = []

    @classmethod
    def from_caps(cls, model: torch.nn.Module, caps: Sequence[Cap], cap_first_token: bool = False, **kwargs: Any) -> ActivationSteering:
        """Capping in this project's convention: :class:`~assistant_axis.capping.Cap` floors."""
        steerer = cls(model, [], intervention_type="capping", cap_thresholds=[], cap_first_token=cap_first_token, **kwargs)
        for cap in caps:
            (layer,) = check_layer_indices([cap.layer], len(steerer._blocks))
            steerer._ops[layer].append(_Op("capping", cap.vector, cap=cap))
            steerer.telemetry.setdefault(layer, CapTelemetry())
        return steerer

    @classmethod
    def from_experiment(cls, model: torch.nn.Module, experiment: CappingExperiment, **kwargs: Any) -> ActivationSteering:
        """The caps of one experiment, with its first-token policy."""
        return cls.from_caps(model, experiment.caps, cap_first_token=experiment.cap_first_token, **kwargs)

    def _apply(self, layer: int, h: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        dtype = h.dtype
        x = h.float()
        if self.positions == "last":
            sel = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            sel[:, -1] = True
        else:
            sel = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for op in self._ops[layer]:
            v = op.vector.to(x.device)
            if op.kind == "addition":
                new = x + op.coeff * v
            elif op.kind == "ablation":
                new = x - (x @ v).unsqueeze(-1) * v + op.coeff * v
            elif op.kind == "mean_ablation":
                assert op.mean is not None
                new = x - (x @ v).unsqueeze(-1) * v + op.mean.to(x.device)
            else:
                assert op.cap is not None
                csel = sel
                if not self.cap_first_token and position_ids is not None:
                    csel = sel & (position_ids.to(x.device) != 0)
                x, deficit = op.cap.apply(x, csel)
                tel = self.telemetry[layer]
                tel.tokens += int(csel.sum())
                acted = deficit > 0
                tel.capped += int(acted.sum())
                tel.correction_sum += float(deficit[acted].sum())
                continue
            x = torch.where(sel.unsqueeze(-1), new, x)
        return x.to(dtype)

    def _hook(self, layer: int):
        def hook(_module, args, kwargs, output):
            h = output[0] if isinstance(output, tuple) else output
            pos = kwargs.get("position_ids")
            if pos is None:
                pos = kwargs.get("cache_position")
                if pos is not None and pos.ndim == 1:
                    pos = pos.unsqueeze(0).expand(h.shape[0], -1)
            if pos is not None and pos.shape != h.shape[:2]:
                pos = pos.expand(h.shape[0], -1) if pos.shape[-1] == h.shape[1] else None
            new = self._apply(layer, h, pos)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def telemetry_summary(self) -> dict[int, dict[str, float]]:
        return {layer: tel.as_dict() for layer, tel in sorted(self.telemetry.items())}

    def reset_telemetry(self) -> None:
        for layer in self.telemetry:
            self.telemetry[layer] = CapTelemetry()

    def __enter__(self) -> ActivationSteering:
        self.remove()
        for layer in self._ops:
            self._handles.append(self._blocks[layer].register_forward_hook(self._hook(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def build_capping_steerer(
    model: torch.nn.Module, capping_config: CappingConfig | dict, experiment_id: str | int, **kwargs: Any
) -> ActivationSteering:
    """Steerer for one experiment of a capping config (ours or a reference dict)."""
    if isinstance(capping_config, dict):
        capping_config = CappingConfig.from_reference(capping_config)
    exp = capping_config.get(experiment_id)
    cap_first_token = kwargs.pop("cap_first_token", exp.cap_first_token)
    return ActivationSteering.from_caps(model, exp.caps, cap_first_token=cap_first_token, **kwargs)
