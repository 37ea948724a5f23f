"""Steer a HF model: addition, ablation, mean-ablation and capping at many layers at once.

The intervention acts on the output of decoder blocks (the residual stream, layer convention of
:mod:`assistant_axis.layers`). Two entry points share one hook:

* the reference API - :class:`ActivationSteering`'s constructor, the three ``create_*_steerer``
  factories and :func:`build_capping_steerer` on a reference capping dict - with the reference's
  arguments, defaults, errors and meaning, capping included (a *ceiling* on the given vector at
  **every** position);
* this project's API - :meth:`ActivationSteering.from_caps` / :meth:`~ActivationSteering.from_experiment`
  with :class:`~assistant_axis.capping.Cap` floors, which by default leave position 0 alone (the
  first-token policy, see :mod:`assistant_axis.capping`), plus per-layer telemetry for both.

With ``u = v / (||v|| + 1e-8)`` and ``h`` a block output, the operations are: addition
``h + c*v``; ablation ``h - <h,u>u + c*v`` (``c*v``, not ``c*u``); mean ablation
``h - <h,u>u + mean``; capping ``h - u * max(<h,u> - tau, 0)``. They are computed in float32 and
cast back to the model's dtype (the reference computes in the model's dtype; in float32 the two
agree to rounding, in bfloat16 they differ by bfloat16 rounding only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .axis import unit
from .capping import FIRST_TOKEN_KEY, Cap, CappingConfig, CappingExperiment
from .layers import check_layer_indices, get_layers

log = logging.getLogger(__name__)

INTERVENTIONS = ("addition", "ablation", "mean_ablation", "capping")


@dataclass
class _Op:
    kind: str
    vector: torch.Tensor | None = None  # as given (addition and the c*v of ablation), float32
    direction: torch.Tensor | None = None  # unit vector (ablation, mean ablation)
    coeff: float = 1.0
    cap: Cap | None = None  # capping: the floor in this project's convention
    mean: torch.Tensor | None = None
    index: int = 0  # position of the vector in the call, for debug output


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


def _vector_list(value: Any, what: str) -> list[torch.Tensor]:
    """A 1-D tensor, a 2-D tensor (one vector per row) or a list of vectors, as a list of tensors."""
    if torch.is_tensor(value):
        if value.ndim == 1:
            return [value]
        if value.ndim == 2:
            return [value[i] for i in range(value.shape[0])]
        raise ValueError(f"{what} tensor must be 1D or 2D")
    return [v if torch.is_tensor(v) else torch.as_tensor(v) for v in value]


def _float_list(value: float | Sequence[float]) -> list[float]:
    return [float(value)] if isinstance(value, (int, float)) else [float(x) for x in value]


def _renormalised(cap: Cap) -> Cap:
    """``cap`` with its vector renormalised in float32, as the steerer applies it.

    A ``Cap`` built by hand may hold a vector of any length. The vector goes through
    :func:`~assistant_axis.axis.unit` twice, as in the steerer before the architecture change
    (once reading the floor form, once in the reference constructor): that keeps capped bf16
    generations token-identical to runs made then, where a last-bit difference in the direction
    would flip a few greedy tokens.
    """
    return Cap(cap.layer, unit(unit(cap.vector.float())), cap.floor)


class ActivationSteering:
    """Context manager that installs forward hooks on decoder blocks and removes them on exit.

    Reference arguments (same names, defaults and errors as the reference package):
    ``steering_vectors`` (a vector, a 2-D tensor of vectors or a list), ``coefficients`` (one per
    vector), ``layer_indices`` (one per vector, or a single index broadcast over all of them;
    negative indices count from the end; default ``-1``, the last block), ``intervention_type``
    (``addition``, ``ablation``, ``mean_ablation`` or ``capping``), ``positions`` (``all`` or
    ``last``: the last position of each forward call, i.e. the newest token while generating),
    ``mean_activations`` (mean ablation), ``cap_thresholds`` (capping: ceilings on ``<h, u>``) and
    ``debug`` (print projections before and after each intervention).

    Extensions: ``layers_path`` (where the blocks are, for unusual architectures) and
    ``cap_first_token`` (``True``, the reference behaviour: capping also touches absolute position 0).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        steering_vectors: torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[float]],
        *,
        coefficients: float | Sequence[float] = 1.0,
        layer_indices: int | Sequence[int] = -1,
        intervention_type: str = "addition",
        positions: str = "all",
        mean_activations: torch.Tensor | Sequence[torch.Tensor] | None = None,
        cap_thresholds: float | Sequence[float] | None = None,
        debug: bool = False,
        layers_path: str | None = None,
        cap_first_token: bool = True,
    ) -> None:
        kind = intervention_type.lower()
        self._setup(model, positions, debug, layers_path, cap_first_token)
        if kind not in INTERVENTIONS:
            raise ValueError("intervention_type must be 'addition', 'ablation', 'mean_ablation', or 'capping'")
        if kind == "mean_ablation":
            if self.positions != "all":
                raise ValueError("mean_ablation only supports positions='all'")
            if mean_activations is None:
                raise ValueError("mean_activations is required for mean_ablation")
        vectors = [self._check_width(v, i, "Steering vector") for i, v in enumerate(_vector_list(steering_vectors, "steering_vectors"))]
        n = len(vectors)
        coeffs = _float_list(coefficients)
        layers = [int(layer_indices)] if isinstance(layer_indices, int) else [int(x) for x in layer_indices]
        means = None
        if mean_activations is not None:
            means = [self._check_width(m, i, "Mean activation") for i, m in enumerate(_vector_list(mean_activations, "mean_activations"))]
        taus: list[float] | None = None
        if kind == "capping":
            if cap_thresholds is None:
                raise ValueError("cap_thresholds is required when intervention_type='capping'")
            taus = _float_list(cap_thresholds)
            if len(taus) != n:
                raise ValueError(f"Number of cap_thresholds ({len(taus)}) must match number of vectors ({n})")
        if kind != "mean_ablation" and len(coeffs) != n:
            raise ValueError(f"Number of coefficients ({len(coeffs)}) must match number of vectors ({n})")
        if means is not None and len(means) != n:
            raise ValueError(f"Number of mean_activations ({len(means)}) must match number of vectors ({n})")
        if len(layers) == 1 and n > 1:
            layers = layers * n
        elif len(layers) != n:
            raise ValueError(
                f"Number of layer_indices ({len(layers)}) must match number of vectors ({n}) or be 1 (for broadcasting)"
            )
        for layer in layers:
            if not -len(self._blocks) <= layer < len(self._blocks):
                raise IndexError(f"layer_idx {layer} out of range for {len(self._blocks)} layers")
        for i, (vec, layer) in enumerate(zip(vectors, layers)):
            coeff = coeffs[i] if kind != "mean_ablation" else 0.0
            if kind == "addition":
                op = _Op("addition", vector=vec, coeff=coeff, index=i)
            elif kind == "ablation":
                op = _Op("ablation", vector=vec, direction=unit(vec), coeff=coeff, index=i)
            elif kind == "mean_ablation":
                assert means is not None
                op = _Op("mean_ablation", direction=unit(vec), mean=means[i], index=i)
            else:
                assert taus is not None
                # the reference ceiling tau on v is this project's floor -tau on -v/||v||
                op = _Op("capping", cap=Cap.from_reference(self._resolve(layer), vec, taus[i]), index=i)
            self._add(layer, op)
        if self.debug:
            print("[ActivationSteering] Initialized with:")
            print(f"  - {n} steering vectors")
            print(f"  - {len(set(layers))} unique layers: {sorted(set(layers))}")
            print(f"  - Intervention: {kind}")

    def _setup(self, model: torch.nn.Module, positions: str, debug: bool, layers_path: str | None, cap_first_token: bool) -> None:
        positions = positions.lower()
        if positions not in ("all", "last"):
            raise ValueError("positions must be 'all' or 'last'")
        self.model = model
        self.positions = positions
        self.debug = debug
        self.cap_first_token = cap_first_token
        self._blocks = get_layers(model, layers_path)
        config = getattr(model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._hidden_size = getattr(text_config, "hidden_size", None)
        self._ops: dict[int, list[_Op]] = {}  # keyed by the index as given (the reference hooks -1 and L-1 apart)
        self.telemetry: dict[int, CapTelemetry] = {}
        self._handles: list[Any] = []

    def _check_width(self, vec: torch.Tensor, i: int, what: str) -> torch.Tensor:
        vec = vec.detach().float().cpu()
        if vec.ndim != 1:
            raise ValueError(f"{what} {i} must be 1-D, got shape {vec.shape}")
        if self._hidden_size and vec.numel() != self._hidden_size:
            raise ValueError(f"{what} {i} length {vec.numel()} != model hidden_size {self._hidden_size}")
        return vec

    def _resolve(self, layer: int) -> int:
        return layer + len(self._blocks) if layer < 0 else layer

    def _add(self, layer: int, op: _Op) -> None:
        self._ops.setdefault(layer, []).append(op)
        if op.kind == "capping":
            self.telemetry.setdefault(self._resolve(layer), CapTelemetry())

    @classmethod
    def from_caps(
        cls, model: torch.nn.Module, caps: Sequence[Cap], cap_first_token: bool = False, positions: str = "all",
        layers_path: str | None = None, debug: bool = False,
    ) -> ActivationSteering:
        """Capping in this project's convention: :class:`~assistant_axis.capping.Cap` floors.

        ``cap_first_token=False`` (default) leaves absolute position 0 alone: the pipeline's policy.
        """
        self = cls.__new__(cls)
        self._setup(model, positions, debug, layers_path, cap_first_token)
        for i, cap in enumerate(caps):
            (layer,) = check_layer_indices([cap.layer], len(self._blocks))
            self._add(layer, _Op("capping", cap=_renormalised(cap), index=i))
        return self

    @classmethod
    def from_experiment(cls, model: torch.nn.Module, experiment: CappingExperiment, **kwargs: Any) -> ActivationSteering:
        """The caps of one experiment, with its first-token policy (``cap_first_token=`` overrides it)."""
        kwargs.setdefault("cap_first_token", experiment.cap_first_token)
        return cls.from_caps(model, experiment.caps, **kwargs)

    # ---- the hook ----
    def _apply(self, layer: int, h: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        dtype = h.dtype
        x = h.float()
        if self.positions == "last":
            sel = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            sel[:, -1] = True
        else:
            sel = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for op in self._ops[layer]:
            before = x
            if op.kind == "capping":
                assert op.cap is not None
                csel = sel
                if not self.cap_first_token and position_ids is not None:
                    csel = sel & (position_ids.to(x.device) != 0)
                x, deficit = op.cap.apply(x, csel)
                tel = self.telemetry[self._resolve(layer)]
                tel.tokens += int(csel.sum())
                acted = deficit > 0
                tel.capped += int(acted.sum())
                tel.correction_sum += float(deficit[acted].sum())
            else:
                if op.kind == "addition":
                    assert op.vector is not None
                    new = x + op.coeff * op.vector.to(x.device)
                else:
                    assert op.direction is not None
                    u = op.direction.to(x.device)
                    removed = x - (x @ u).unsqueeze(-1) * u
                    if op.kind == "ablation":
                        assert op.vector is not None
                        new = removed + op.coeff * op.vector.to(x.device)
                    else:
                        assert op.mean is not None
                        new = removed + op.mean.to(x.device)
                x = torch.where(sel.unsqueeze(-1), new, x)
            if self.debug:
                self._print_debug(layer, op, before, x)
        return x.to(dtype)

    def _print_debug(self, layer: int, op: _Op, before: torch.Tensor, after: torch.Tensor) -> None:
        if op.cap is not None:
            v = -op.cap.vector.to(before.device)  # the reference's role-ward u
        else:
            v = unit(op.vector if op.vector is not None else op.direction)  # type: ignore[arg-type]
            v = v.to(before.device)
        print(
            f"[ActivationSteering] Layer {layer}, vec {op.index}: "
            f"pre mean={float((before @ v).mean()):.3f} | post mean={float((after @ v).mean()):.3f}"
        )

    def _hook(self, layer: int):
        def hook(_module, args, kwargs, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            if not torch.is_tensor(h):
                return output
            pos = kwargs.get("position_ids")
            if pos is None:
                pos = kwargs.get("cache_position")
                if pos is not None and pos.ndim == 1:
                    pos = pos.unsqueeze(0).expand(h.shape[0], -1)
            if pos is not None and pos.shape != h.shape[:2]:
                pos = pos.expand(h.shape[0], -1) if pos.shape[-1] == h.shape[1] else None
            new = self._apply(layer, h, pos)
            return (new, *output[1:]) if isinstance(output, (tuple, list)) else new

        return hook

    # ---- telemetry (capping) ----
    def telemetry_summary(self) -> dict[int, dict[str, float]]:
        """Per capped layer: token positions seen, positions capped and the mean correction size."""
        return {layer: tel.as_dict() for layer, tel in sorted(self.telemetry.items())}

    def reset_telemetry(self) -> None:
        for layer in self.telemetry:
            self.telemetry[layer] = CapTelemetry()

    # ---- context manager ----
    def __enter__(self) -> ActivationSteering:
        self.remove()
        for layer in self._ops:
            self._handles.append(self._blocks[layer].register_forward_hook(self._hook(layer), with_kwargs=True))
        if self.debug:
            print(f"[ActivationSteering] Registered {len(self._handles)} hooks")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this steerer installed (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        had = bool(self._handles)
        self._handles = []
        if self.debug and had:
            print("[ActivationSteering] Removed all hooks")


def create_feature_ablation_steerer(
    model: torch.nn.Module,
    feature_directions: Sequence[torch.Tensor],
    layer_indices: int | Sequence[int],
    ablation_coefficients: float | Sequence[float] = 0.0,
    **kwargs: Any,
) -> ActivationSteering:
    """Reference API: ablate each direction (``0.0`` removes it; ``c`` adds back ``c * direction``)."""
    return ActivationSteering(
        model, feature_directions, coefficients=ablation_coefficients, layer_indices=layer_indices,
        intervention_type="ablation", **kwargs,
    )


def create_multi_feature_steerer(
    model: torch.nn.Module,
    feature_directions: Sequence[torch.Tensor],
    coefficients: Sequence[float],
    layer_indices: int | Sequence[int],
    intervention_type: str = "addition",
    **kwargs: Any,
) -> ActivationSteering:
    """Reference API: several directions with one coefficient each."""
    return ActivationSteering(
        model, feature_directions, coefficients=coefficients, layer_indices=layer_indices,
        intervention_type=intervention_type, **kwargs,
    )


def create_mean_ablation_steerer(
    model: torch.nn.Module,
    feature_directions: Sequence[torch.Tensor],
    mean_activations: Sequence[torch.Tensor],
    layer_indices: int | Sequence[int],
    **kwargs: Any,
) -> ActivationSteering:
    """Reference API: replace each direction's component by the given mean activation."""
    return ActivationSteering(
        model, feature_directions, layer_indices=layer_indices, intervention_type="mean_ablation",
        mean_activations=mean_activations, coefficients=[0.0] * len(feature_directions), positions="all", **kwargs,
    )


def build_capping_steerer(
    model: torch.nn.Module, capping_config: Mapping[str, Any] | CappingConfig, experiment_id: str | int, **kwargs: Any
) -> ActivationSteering:
    """Steerer for one experiment of a capping config; ``experiment_id`` is an id string or an index.

    * A reference dict (from :func:`~assistant_axis.capping.load_capping_config` or ``torch.load``):
      the reference call, capping **every** position as the reference does; ``kwargs`` go to
      :class:`ActivationSteering` (e.g. ``debug=True``, or ``cap_first_token=False`` for the
      pipeline's policy). An unknown id raises ``ValueError``.
    * A :class:`~assistant_axis.capping.CappingConfig` (this project's object): its experiment with
      the file's first-token policy (``cap_first_token=`` overrides it).
    """
    if isinstance(capping_config, CappingConfig):
        try:
            experiment = capping_config.get(experiment_id)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"Experiment '{experiment_id}' not found in config") from exc
        return ActivationSteering.from_experiment(model, experiment, **kwargs)
    experiment = None
    if isinstance(experiment_id, int):
        experiment = capping_config["experiments"][experiment_id]
    else:
        experiment = next((e for e in capping_config["experiments"] if e["id"] == experiment_id), None)
    if experiment is None:
        raise ValueError(f"Experiment '{experiment_id}' not found in config")
    vectors, caps, layers = [], [], []
    for intervention in experiment["interventions"]:
        if "cap" not in intervention:
            continue
        entry = capping_config["vectors"][intervention["vector"]]
        vectors.append(entry["vector"].to(dtype=torch.float32))
        caps.append(float(intervention["cap"]))
        layers.append(int(entry["layer"]))
    if not vectors:
        raise ValueError(f"No capping interventions found in experiment '{experiment_id}'")
    if capping_config.get(FIRST_TOKEN_KEY) == "skip" and "cap_first_token" not in kwargs:
        log.warning(
            "this capping config was calibrated with position 0 left uncapped (first_token: skip); the reference "
            "call caps every position. Pass cap_first_token=False to apply the file's own policy."
        )
    return ActivationSteering(
        model, torch.stack(vectors), layer_indices=layers, intervention_type="capping", cap_thresholds=caps,
        coefficients=[0.0] * len(vectors), positions="all", **kwargs,
    )
