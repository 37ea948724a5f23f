"""Capping, steering and activation capture inside vLLM workers (the worker half of :mod:`vllm_backend`).

vLLM mixes :class:`AxisWorkerExtension` into each of its workers (``worker_extension_cls``); the
engine calls its ``axis_*`` methods through ``LLM.collective_rpc``. Everything crossing that
boundary is plain data (lists, floats, dicts), so nothing is pickled.

Why the hooks look the way they do:

* vLLM's Llama-family decoder layers return ``(hidden_states, residual)`` and the *next* layer's
  fused add+norm sums them, so the residual stream after block ``L`` (this project's "layer L",
  see :mod:`assistant_axis.layers`) is ``hidden_states + residual``. Projections are taken on that
  sum and corrections are added to ``hidden_states`` alone, which changes the sum by exactly the
  correction.
* Tokens of all running requests are packed into one flat ``(tokens, hidden)`` tensor. The model
  runner's ``input_batch`` (request ids, prompt lengths) and ``query_start_loc`` (where each
  request's tokens start) say which token belongs to which request; a forward pre-hook on the
  whole model reads them once per step.
* Hooks only fire in eager mode (``enforce_eager=True``); under torch.compile they silently never
  run, which is why the engine side forces eager mode whenever this extension is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .activations import pool_tokens
from .capping import Cap
from .layers import check_layer_indices, get_layers


@dataclass
class _Telemetry:
    tokens: int = 0
    capped: int = 0
    correction_sum: float = 0.0


@dataclass
class _Step:
    """Which flat token rows of the current forward pass are response tokens, and whose."""

    n_tokens: int
    weights: torch.Tensor | None = None  # (n_resp_reqs, n_tokens): 1 where a token is a response token of that request
    resp_req_ids: list[str] = field(default_factory=list)
    resp_counts: list[int] = field(default_factory=list)
    last_pos: list[int] = field(default_factory=list)  # highest response position per request
    partial: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (n_resp_reqs, hidden)


class _AxisState:
    """Interventions, telemetry and capture buffers of one worker."""

    def __init__(self) -> None:
        self.caps: dict[int, list[Cap]] = {}
        self.additions: dict[int, list[torch.Tensor]] = {}
        self.cap_first_token = False
        self.capture_layers: list[int] = []
        self.telemetry: dict[int, _Telemetry] = {}
        self.handles: list[Any] = []
        self.step: _Step | None = None
        # request id (worker form "<id>-<8 hex>") -> (sum over response tokens (layers, hidden), count)
        self.captured: dict[str, tuple[torch.Tensor, int]] = {}
        self.next_pos: dict[str, int] = {}  # first response position not yet captured, per request


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

    def axis_configure(
        self,
        caps: list[tuple[int, list[float], float]],
        additions: list[tuple[int, list[float], float]],
        cap_first_token: bool,
    ) -> int:
        """Replace every intervention at once and restart telemetry; returns how many layers are hooked.

        ``caps``: :meth:`Cap.to_wire` triples ``(layer, unit Assistant-ward vector, floor)``; ``additions``: ``(layer, vector,
        coefficient)``, added at every position before the caps of the same layer act, so a floor
        still holds after steering.
        """
        state = self._axis()
        _, blocks = self._axis_blocks()
        device = next(self.model_runner.model.parameters()).device
        n_layers = len(blocks)
        state.caps, state.additions = {}, {}
        for wire in caps:
            cap = Cap.from_wire(wire, device)
            (idx,) = check_layer_indices([cap.layer], n_layers)
            state.caps.setdefault(idx, []).append(cap)
        for layer, vec, coeff in additions:
            (idx,) = check_layer_indices([int(layer)], n_layers)
            state.additions.setdefault(idx, []).append(float(coeff) * torch.tensor(vec, dtype=torch.float32, device=device))
        state.cap_first_token = bool(cap_first_token)
        state.telemetry = {layer: _Telemetry() for layer in state.caps}
        return self._axis_install()

    def axis_set_capture(self, layers: list[int]) -> int:
        """Capture response activations at ``layers`` from now on (empty: stop); telemetry is kept."""
        state = self._axis()
        self._axis_fold_step()
        state.capture_layers = check_layer_indices([int(x) for x in layers], len(self._axis_blocks()[1]))
        return self._axis_install()

    def _axis_install(self) -> int:
        """(Re)register the hooks the current settings need."""
        state = self._axis()
        for handle in state.handles:
            handle.remove()
        state.handles = []
        model, blocks = self._axis_blocks()
        hooked = set(state.caps) | set(state.additions) | set(state.capture_layers)
        # With pipeline parallelism a rank holds only some blocks; the others are parameterless placeholders.
        local = {layer for layer in hooked if any(True for _ in blocks[layer].parameters())}
        capture_local = local & set(state.capture_layers)
        if capture_local and capture_local != set(state.capture_layers):
            raise ValueError("activation capture needs all capture layers on one pipeline stage")
        if not local:
            return 0
        state.handles.append(model.register_forward_pre_hook(self._axis_pre_hook, with_kwargs=True))
        for layer in sorted(local):
            state.handles.append(blocks[layer].register_forward_hook(self._axis_layer_hook(layer), with_kwargs=True))
        return len(local)

    def axis_telemetry(self) -> dict[int, dict[str, float]]:
        """Per capped layer: token positions seen, positions capped, summed correction norm."""
        return {
            layer: {"tokens": t.tokens, "capped": t.capped, "correction_sum": t.correction_sum}
            for layer, t in sorted(self._axis().telemetry.items())
        }

    def axis_reset_telemetry(self) -> None:
        """Zero the counters without touching the interventions (e.g. between evaluation sets)."""
        state = self._axis()
        state.telemetry = {layer: _Telemetry() for layer in state.telemetry}

    def axis_pop_captures(self) -> dict[str, tuple[list[list[float]], int]]:
        """Captured response sums and token counts per worker request id, then forget them."""
        state = self._axis()
        self._axis_fold_step()
        out = {rid: (total.tolist(), count) for rid, (total, count) in state.captured.items()}
        state.captured, state.next_pos = {}, {}
        return out

    # ---- hooks ----
    def _axis_pre_hook(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Once per forward pass: note the real token count and where the response tokens are."""
        state = self._axis()
        self._axis_fold_step()
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = int(batch.num_reqs)
        qsl = runner.query_start_loc.cpu[: num_reqs + 1].tolist()
        step = _Step(n_tokens=int(qsl[-1]) if num_reqs else 0)
        state.step = step
        if not state.capture_layers or num_reqs == 0:
            return
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None:
            return
        positions = positions[: step.n_tokens].cpu()
        rows: list[torch.Tensor] = []
        for i, rid in enumerate(batch.req_ids[:num_reqs]):
            start, stop = qsl[i], qsl[i + 1]
            first = max(int(batch.num_prompt_tokens[i]), state.next_pos.get(rid, 0))
            pos = positions[start:stop]
            sel = torch.nonzero(pos >= first).flatten()
            if sel.numel() == 0:
                continue
            rows.append(sel + start)
            step.resp_req_ids.append(rid)
            step.resp_counts.append(int(sel.numel()))
            step.last_pos.append(int(pos[sel[-1]]))
        if rows:
            step.weights = torch.zeros((len(rows), step.n_tokens), dtype=torch.float32)
            for owner, selected in enumerate(rows):
                step.weights[owner, selected] = 1.0

    def _axis_fold_step(self) -> None:
        """Add the previous step's per-request partial sums into the per-request totals."""
        state = self._axis()
        step, state.step = state.step, None
        if step is None or step.weights is None or len(step.partial) != len(state.capture_layers):
            return
        stacked = torch.stack([step.partial[layer] for layer in state.capture_layers], dim=1).cpu()
        for i, rid in enumerate(step.resp_req_ids):
            total, count = state.captured.get(rid, (torch.zeros_like(stacked[i]), 0))
            state.captured[rid] = (total + stacked[i], count + step.resp_counts[i])
            state.next_pos[rid] = step.last_pos[i] + 1

    def _axis_layer_hook(self, layer: int) -> Callable[..., Any]:
        """Forward hook of block ``layer``: steer, cap, count, then capture the resulting stream."""
        state = self._axis()

        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            hidden, residual = output
            step = state.step
            n = step.n_tokens if step is not None and step.n_tokens else hidden.shape[0]
            positions = args[0] if args else kwargs["positions"]
            h = hidden.float()
            x = h + residual.float()  # the residual stream after this block
            for vec in state.additions.get(layer, ()):
                h = h + vec
                x = x + vec
            caps = state.caps.get(layer, ())
            if caps:
                allowed = positions[: x.shape[0]] != 0 if not state.cap_first_token else None
                tel = state.telemetry[layer]
                for cap in caps:
                    x, deficit = cap.apply(x, allowed)
                    h = h + deficit.unsqueeze(-1) * cap.vector.to(h.device)
                    real = deficit[:n]
                    tel.tokens += int(n if allowed is None else allowed[:n].sum())
                    acted = real > 0
                    tel.capped += int(acted.sum())
                    tel.correction_sum += float(real[acted].sum())
            if step is not None and step.weights is not None and layer in state.capture_layers:
                weights = step.weights.to(x.device).unsqueeze(0)
                step.partial[layer] = pool_tokens(x[: step.n_tokens].unsqueeze(0), weights)[0]
            if layer not in state.caps and layer not in state.additions:
                return None
            return h.to(hidden.dtype), residual

        return hook
