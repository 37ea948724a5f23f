"""Per-request capping, steering, capture and projections inside vLLM workers (the worker half of :mod:`vllm_backend`).

vLLM mixes :class:`AxisWorkerExtension` into each of its workers (``worker_extension_cls``); the
engine calls its ``axis_*`` methods through ``LLM.collective_rpc``. Everything crossing that
boundary is plain data (lists, floats, dicts), so nothing is pickled.

**Per request, not per engine.** Interventions (a capping experiment and/or additive steering) and
probes (a unit direction at a layer) are *defined* once by name (:meth:`axis_define_intervention`,
:meth:`axis_define_probe`). Each request then says what it wants in its sampling parameters'
``extra_args`` (keys in :data:`REQUEST_KEYS`): the name of its intervention (or none), the layers
whose mean response activation to capture, and the probes whose per-token projections to record.
So one engine call can serve several capping experiments and uncapped requests side by side, and a
request's caps touch only that request's token rows. The same keys fit vLLM's OpenAI server
(``vllm_xargs``), which is how a server can offer per-request capping and projections.

Why the hooks look the way they do:

* vLLM's Llama-family decoder layers return ``(hidden_states, residual)`` and the *next* layer's
  fused add+norm sums them, so the residual stream after block ``L`` (this project's "layer L",
  see :mod:`assistant_axis.layers`) is ``hidden_states + residual``. Projections are taken on that
  sum and corrections are added to ``hidden_states`` alone, which changes the sum by exactly the
  correction.
* Tokens of all running requests are packed into one flat ``(tokens, hidden)`` tensor. The model
  runner's ``input_batch`` (request ids, prompt lengths) and ``query_start_loc`` (where each
  request's tokens start) say which rows belong to which request; a forward pre-hook on the whole
  model reads them once per step and every block hook reuses that plan. A block with nothing to do
  for the running requests returns at once.
* Hooks only fire in eager mode (``enforce_eager=True``); under torch.compile they silently never
  run, which is why the engine side forces eager mode whenever this extension is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .activations import pool_tokens
from .capping import Cap
from .layers import check_layer_indices, get_layers

log = logging.getLogger(__name__)

# Keys of SamplingParams.extra_args a request uses to ask for work (flat, JSON-friendly values).
INTERVENTION_KEY = "axis_intervention"  # name of a defined intervention, or absent/None
CAPTURE_KEY = "axis_capture"  # list of layers: mean residual stream over the response tokens
PROBES_KEY = "axis_probes"  # list of probe names: projection of every token on the probe's direction
REQUEST_KEYS = (INTERVENTION_KEY, CAPTURE_KEY, PROBES_KEY)


@dataclass
class _Intervention:
    """A named set of interventions: caps (this project's floors) and additive steering, per layer."""

    caps: dict[int, list[Cap]]
    additions: dict[int, torch.Tensor]  # layer -> summed coefficient * vector, float32
    cap_first_token: bool

    @property
    def layers(self) -> set[int]:
        return set(self.caps) | set(self.additions)


@dataclass(frozen=True)
class _Probe:
    layer: int
    vector: torch.Tensor  # unit, float32, on the worker's device


@dataclass(frozen=True)
class _Spec:
    """What one request asked for (parsed once from its ``extra_args``)."""

    intervention: str | None = None
    capture: tuple[int, ...] = ()
    probes: tuple[str, ...] = ()


_NO_SPEC = _Spec()


@dataclass
class _Step:
    """The plan of one forward pass: which flat token rows belong to which request and what they need."""

    n_tokens: int
    # intervention name -> token rows of its requests (None: every row of the pass)
    groups: dict[str, torch.Tensor | None] = field(default_factory=dict)
    layers: set[int] = field(default_factory=set)  # blocks with work in this pass
    # capture: rows of requests that capture, pooled per request into ``partial``
    capture_weights: torch.Tensor | None = None  # (n_capture_reqs, n_tokens)
    capture_ids: list[str] = field(default_factory=list)
    capture_counts: list[int] = field(default_factory=list)
    capture_last: list[int] = field(default_factory=list)  # highest response position per request
    capture_layers: set[int] = field(default_factory=set)  # blocks some capturing request of this pass wants
    partial: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (n_capture_reqs, hidden)
    # probes: probe name -> (rows, owner request ids per row, positions per row)
    probe_rows: dict[str, tuple[torch.Tensor, list[str], torch.Tensor]] = field(default_factory=dict)
    probe_values: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _AxisState:
    """Definitions, telemetry and results of one worker."""

    interventions: dict[str, _Intervention] = field(default_factory=dict)
    probes: dict[str, _Probe] = field(default_factory=dict)
    capture_layers: set[int] = field(default_factory=set)  # blocks hooked for capture
    # (intervention, layer) -> float64 [positions seen, positions capped, summed correction]
    telemetry: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    hooked: set[int] = field(default_factory=set)
    step: _Step | None = None
    specs: dict[str, _Spec] = field(default_factory=dict)  # worker request id -> its spec
    # worker request id ("<id>-<8 hex>") -> layer -> (sum over response tokens, count)
    captured: dict[str, dict[int, tuple[torch.Tensor, int]]] = field(default_factory=dict)
    next_pos: dict[str, int] = field(default_factory=dict)  # first response position not yet captured
    # worker request id -> probe -> list of (positions, values) chunks
    projected: dict[str, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]] = field(default_factory=dict)


def parse_spec(extra_args: dict[str, Any] | None) -> _Spec:
    """A request's spec from its ``extra_args`` (missing keys: nothing asked)."""
    if not extra_args:
        return _NO_SPEC
    name = extra_args.get(INTERVENTION_KEY)
    capture = tuple(int(x) for x in extra_args.get(CAPTURE_KEY) or ())
    probes = tuple(str(x) for x in extra_args.get(PROBES_KEY) or ())
    if name is None and not capture and not probes:
        return _NO_SPEC
    return _Spec(None if name is None else str(name), capture, probes)


class AxisWorkerExtension:
    """Mixed into the vLLM worker class; ``self.model_runner`` is the worker's model runner."""

    model_runner: Any  # provided by the vLLM worker this class is mixed into

    def _axis(self) -> _AxisState:
        state = getattr(self, "_axis_state", None)
        if state is None:
            state = _AxisState()
            self._axis_state = state
        return state

    def _axis_blocks(self) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
        model = self.model_runner.model
        return model, get_layers(model)

    def _axis_device(self) -> torch.device:
        return next(self.model_runner.model.parameters()).device

    # ---- definitions (RPC) ----
    def axis_define_intervention(
        self,
        name: str,
        caps: list[tuple[int, list[float], float]],
        additions: list[tuple[int, list[float], float]],
        cap_first_token: bool,
    ) -> int:
        """Define (or replace) the intervention ``name``; its telemetry restarts. Returns the hooked block count.

        ``caps``: :meth:`Cap.to_wire` triples ``(layer, unit Assistant-ward vector, floor)``;
        ``additions``: ``(layer, vector, coefficient)``, added at every position before the caps of
        the same layer act, so a floor still holds after steering.
        """
        state = self._axis()
        device = self._axis_device()
        n_layers = len(self._axis_blocks()[1])
        inter = _Intervention({}, {}, bool(cap_first_token))
        for wire in caps:
            cap = Cap.from_wire(wire, device)
            (idx,) = check_layer_indices([cap.layer], n_layers)
            inter.caps.setdefault(idx, []).append(cap)
        for layer, vec, coeff in additions:
            (idx,) = check_layer_indices([int(layer)], n_layers)
            add = float(coeff) * torch.tensor(vec, dtype=torch.float32, device=device)
            inter.additions[idx] = inter.additions[idx] + add if idx in inter.additions else add
        state.interventions[name] = inter
        for key in [k for k in state.telemetry if k[0] == name]:
            del state.telemetry[key]
        for layer in inter.caps:
            state.telemetry[(name, layer)] = torch.zeros(3, dtype=torch.float64, device=device)
        return self._axis_install()

    def axis_drop_intervention(self, name: str) -> int:
        """Forget an intervention (requests may no longer name it)."""
        state = self._axis()
        state.interventions.pop(name, None)
        for key in [k for k in state.telemetry if k[0] == name]:
            del state.telemetry[key]
        return self._axis_install()

    def axis_reset(self) -> None:
        """Forget every definition and result and remove every hook (plain vLLM again)."""
        state = self._axis()
        for handle in state.handles:
            handle.remove()
        self._axis_state = _AxisState()

    def axis_define_probe(self, name: str, layer: int, vector: list[float]) -> int:
        """Define the probe ``name``: the unit direction of ``vector`` at block ``layer``."""
        state = self._axis()
        (idx,) = check_layer_indices([int(layer)], len(self._axis_blocks()[1]))
        v = torch.tensor(vector, dtype=torch.float32, device=self._axis_device())
        norm = float(v.norm())
        if not norm > 0.0:
            raise ValueError(f"probe {name!r}: the direction at layer {layer} has no length")
        state.probes[name] = _Probe(idx, v / norm)
        return self._axis_install()

    def axis_hook_capture(self, layers: list[int]) -> int:
        """Make sure blocks ``layers`` are hooked so requests can capture them (hooks are only added)."""
        state = self._axis()
        wanted = set(check_layer_indices([int(x) for x in layers], len(self._axis_blocks()[1])))
        if wanted - state.capture_layers:
            state.capture_layers |= wanted
            return self._axis_install()
        return len(state.hooked)

    def _axis_install(self) -> int:
        """(Re)register the hooks the current definitions need."""
        state = self._axis()
        model, blocks = self._axis_blocks()
        wanted = set(state.capture_layers) | {p.layer for p in state.probes.values()}
        for inter in state.interventions.values():
            wanted |= inter.layers
        # With pipeline parallelism a rank holds only some blocks; the others are parameterless placeholders.
        local = {layer for layer in wanted if any(True for _ in blocks[layer].parameters())}
        if local == state.hooked and state.handles:
            return len(local)
        for handle in state.handles:
            handle.remove()
        state.handles, state.hooked = [], local
        if not local:
            return 0
        state.handles.append(model.register_forward_pre_hook(self._axis_pre_hook, with_kwargs=True))
        for layer in sorted(local):
            state.handles.append(blocks[layer].register_forward_hook(self._axis_layer_hook(layer), with_kwargs=True))
        return len(local)

    # ---- results (RPC) ----
    def axis_telemetry(self, name: str) -> dict[int, dict[str, float]]:
        """Per capped layer of intervention ``name``: token positions seen, positions capped, summed correction."""
        out = {}
        for (inter, layer), tel in sorted(self._axis().telemetry.items()):
            if inter == name:
                tokens, capped, correction = tel.tolist()
                out[layer] = {"tokens": tokens, "capped": capped, "correction_sum": correction}
        return out

    def axis_reset_telemetry(self, name: str | None = None) -> None:
        """Zero the counters of one intervention (all when ``None``) without touching the definitions."""
        for key, tel in self._axis().telemetry.items():
            if name is None or key[0] == name:
                tel.zero_()

    def axis_pop_results(self) -> dict[str, dict[str, Any]]:
        """Captures and projections per worker request id, then forget them.

        ``{rid: {"capture": {layer: (sum list, count)}, "probes": {name: (positions, values)}}}``.
        """
        state = self._axis()
        self._axis_fold_step()
        out: dict[str, dict[str, Any]] = {}
        for rid, layers in state.captured.items():
            out.setdefault(rid, {})["capture"] = {layer: (total.tolist(), count) for layer, (total, count) in layers.items()}
        for rid, probes in state.projected.items():
            entry = out.setdefault(rid, {}).setdefault("probes", {})
            for name, chunks in probes.items():
                by_pos: dict[int, float] = {}
                for pos, vals in chunks:  # a recomputed position (after preemption) overwrites its earlier value
                    by_pos.update(zip(pos.tolist(), vals.tolist(), strict=True))
                order = sorted(by_pos)
                entry[name] = (order, [by_pos[p] for p in order])
        state.captured, state.next_pos, state.projected = {}, {}, {}
        live = getattr(self.model_runner, "requests", {})
        state.specs = {rid: spec for rid, spec in state.specs.items() if rid in live}
        return out

    # ---- hooks ----
    def _axis_spec(self, rid: str) -> _Spec:
        state = self._axis()
        spec = state.specs.get(rid)
        if spec is None:
            req = self.model_runner.requests.get(rid)
            params = getattr(req, "sampling_params", None)
            spec = parse_spec(getattr(params, "extra_args", None))
            if spec.intervention is not None and spec.intervention not in state.interventions:
                raise ValueError(f"request {rid} names intervention {spec.intervention!r}, which is not defined")
            for name in spec.probes:
                if name not in state.probes:
                    raise ValueError(f"request {rid} names probe {name!r}, which is not defined")
            state.specs[rid] = spec
        return spec

    def _axis_pre_hook(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Once per forward pass: which rows belong to which request, and which blocks have work."""
        state = self._axis()
        self._axis_fold_step()
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = int(batch.num_reqs)
        qsl = runner.query_start_loc.cpu[: num_reqs + 1].tolist()
        step = _Step(n_tokens=int(qsl[-1]) if num_reqs else 0)
        state.step = step
        if num_reqs == 0:
            return
        specs = [(i, rid, self._axis_spec(rid)) for i, rid in enumerate(batch.req_ids[:num_reqs])]
        device = self._axis_device()
        by_group: dict[str, list[int]] = {}
        for i, _, spec in specs:
            if spec.intervention is not None:
                by_group.setdefault(spec.intervention, []).append(i)
        for name, reqs in by_group.items():
            if len(reqs) == num_reqs:
                step.groups[name] = None
            else:
                step.groups[name] = torch.cat([torch.arange(qsl[i], qsl[i + 1]) for i in reqs]).to(device)
            step.layers |= state.interventions[name].layers
        wants_positions = any(spec.capture or spec.probes for _, _, spec in specs)
        if not wants_positions:
            return
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None:
            return
        positions = positions[: step.n_tokens].cpu()
        self._axis_plan_capture(step, specs, qsl, positions)
        self._axis_plan_probes(step, specs, qsl, positions, device)

    def _axis_plan_capture(self, step: _Step, specs: list[tuple[int, str, _Spec]], qsl: list[int], positions: torch.Tensor) -> None:
        """Rows of response tokens (positions at or past the prompt, not captured before) of capturing requests."""
        state = self._axis()
        batch = self.model_runner.input_batch
        rows: list[torch.Tensor] = []
        for i, rid, spec in specs:
            if not spec.capture:
                continue
            start, stop = qsl[i], qsl[i + 1]
            first = max(int(batch.num_prompt_tokens[i]), state.next_pos.get(rid, 0))
            pos = positions[start:stop]
            sel = torch.nonzero(pos >= first).flatten()
            if sel.numel() == 0:
                continue
            rows.append(sel + start)
            step.capture_ids.append(rid)
            step.capture_counts.append(int(sel.numel()))
            step.capture_last.append(int(pos[sel[-1]]))
            step.capture_layers |= set(spec.capture)
            step.layers |= set(spec.capture)
        if rows:
            step.capture_weights = torch.zeros((len(rows), step.n_tokens), dtype=torch.float32)
            for owner, selected in enumerate(rows):
                step.capture_weights[owner, selected] = 1.0

    def _axis_plan_probes(
        self, step: _Step, specs: list[tuple[int, str, _Spec]], qsl: list[int], positions: torch.Tensor, device: torch.device
    ) -> None:
        """Every token row of the requests that asked for each probe (prompt and response alike)."""
        state = self._axis()
        wanted: dict[str, list[int]] = {}
        for i, _, spec in specs:
            for name in spec.probes:
                wanted.setdefault(name, []).append(i)
        for name, reqs in wanted.items():
            rows = torch.cat([torch.arange(qsl[i], qsl[i + 1]) for i in reqs])
            chosen = set(reqs)
            owners = [rid for i, rid, _ in specs if i in chosen for _ in range(qsl[i + 1] - qsl[i])]
            step.probe_rows[name] = (rows.to(device), owners, positions[rows])
            step.layers.add(state.probes[name].layer)

    def _axis_fold_step(self) -> None:
        """Move the finished pass's per-request partial results into the per-request totals."""
        state = self._axis()
        step, state.step = state.step, None
        if step is None:
            return
        if step.capture_weights is not None:
            for layer, part in step.partial.items():
                part = part.cpu()
                for i, rid in enumerate(step.capture_ids):
                    if layer not in self._axis_spec_of(rid).capture:
                        continue
                    layers = state.captured.setdefault(rid, {})
                    total, count = layers.get(layer, (torch.zeros_like(part[i]), 0))
                    layers[layer] = (total + part[i], count + step.capture_counts[i])
            if step.partial:
                for i, rid in enumerate(step.capture_ids):
                    state.next_pos[rid] = step.capture_last[i] + 1
        for name, values in step.probe_values.items():
            _, owners, positions = step.probe_rows[name]
            values = values.cpu()
            start = 0
            while start < len(owners):
                stop = start
                while stop < len(owners) and owners[stop] == owners[start]:
                    stop += 1
                chunks = state.projected.setdefault(owners[start], {}).setdefault(name, [])
                chunks.append((positions[start:stop], values[start:stop]))
                start = stop

    def _axis_spec_of(self, rid: str) -> _Spec:
        return self._axis().specs.get(rid, _NO_SPEC)

    def _axis_layer_hook(self, layer: int) -> Callable[..., Any]:
        """Forward hook of block ``layer``: each request's steering and caps, then capture and probes."""
        state = self._axis()

        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            step = state.step
            if step is None or layer not in step.layers:
                return None
            hidden, residual = output
            x = hidden.float() + residual.float()  # the residual stream after this block
            h: torch.Tensor | None = None
            for name, rows in step.groups.items():
                inter = state.interventions[name]
                add = inter.additions.get(layer)
                caps = inter.caps.get(layer, ())
                if add is None and not caps:
                    continue
                if h is None:
                    h = hidden.float()
                if rows is None and step.n_tokens != x.shape[0]:
                    rows = torch.arange(step.n_tokens, device=x.device)  # rows past the real tokens are padding
                hs = h if rows is None else h.index_select(0, rows)
                xs = x if rows is None else x.index_select(0, rows)
                if add is not None:
                    hs = hs + add
                    xs = xs + add
                if caps:
                    positions = args[0] if args else kwargs["positions"]
                    pos = positions[: x.shape[0]] if rows is None else positions.index_select(0, rows)
                    allowed = None if inter.cap_first_token else pos != 0
                    tel = state.telemetry[(name, layer)]
                    for cap in caps:
                        xs, deficit = cap.apply(xs, allowed)
                        hs = hs + deficit.unsqueeze(-1) * cap.vector
                        seen = deficit.new_tensor(float(deficit.shape[0])) if allowed is None else allowed.sum()
                        tel += torch.stack([seen.double(), (deficit > 0).sum().double(), deficit.sum().double()])
                if rows is None:
                    h, x = hs, xs
                else:
                    h.index_copy_(0, rows, hs)
                    x.index_copy_(0, rows, xs)
            if step.capture_weights is not None and layer in step.capture_layers:
                weights = step.capture_weights.to(x.device).unsqueeze(0)
                step.partial[layer] = pool_tokens(x[: step.n_tokens].unsqueeze(0), weights)[0]
            for name, (rows, _, _) in step.probe_rows.items():
                probe = state.probes[name]
                if probe.layer == layer:
                    step.probe_values[name] = x.index_select(0, rows) @ probe.vector
            if h is None:
                return None
            return h.to(hidden.dtype), residual

        return hook
