"""The engine loop behind the server: continuous batching on vLLM, or HF one request at a time.

Why one loop thread that owns the engine: vLLM's ``LLMEngine`` is not thread-safe, and continuous
batching means every new request joins the running batch at the next engine step. HTTP threads
only put work in :attr:`Backend.inbox` and read their request's events from
:attr:`Handle.events`; the loop adds requests, steps the engine, fans the new tokens (and, when a
request asked, the projections of its tokens on the axis) out to their handles, and aborts the
requests whose clients went away, so a killed client never leaks a request.

Per-request work reuses the project's vLLM worker extension: capping experiments and the axis
probe are defined once by name; each request names its experiment (or none) and whether it wants
projections, so capped, uncapped and measured requests share one batch without touching each
other's tokens (:mod:`assistant_axis.vllm_worker`).

``capping: "auto"`` (drift-triggered capping): the request starts uncapped with the probe on.
When the prompt has been read, the mean projection of each earlier assistant turn is known; if
one fell below the calibrated threshold the conversation has drifted and the request restarts
capped before any token is sent. Otherwise, while the reply is written, once its running mean
(over at least :data:`AUTO_MIN_TOKENS` tokens) falls below the threshold the request continues
capped from that token on (vLLM: re-queued with the reply so far as prompt; HF: the capping hooks
go on). A projection is ``<h, axis> / ||axis||`` of the residual stream after the target layer;
token ``k`` of a reply is measured when it is fed back, so N generated tokens give N-1 values (the
last one, usually the end-of-turn token, never goes through the model).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .setup import ServeSetup

log = logging.getLogger(__name__)

PROBE = "axis"  # the probe name defined in the worker: the unit axis at the target layer
AUTO_MIN_TOKENS = 4  # auto capping judges a reply's running mean only after this many tokens
_ids = itertools.count(1)


@dataclass
class GenRequest:
    """One chat completion as the engine runs it (already validated and rendered to token ids)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    experiment: str | None  # capping experiment applied from the start, or None
    auto: bool = False  # drift-triggered capping with ``auto_experiment``
    auto_experiment: str | None = None
    projections: bool = False  # measure every token on the axis
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # earlier assistant turns in prompt_ids


@dataclass
class Event:
    """What a handle receives: ``tokens`` (new text and projections), then ``done`` or ``error``."""

    kind: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    projections: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Handle:
    """The HTTP thread's side of one request: an event queue and a cancel switch."""

    def __init__(self, request: GenRequest) -> None:
        self.id = f"r{next(_ids)}"
        self.request = request
        self.events: queue.Queue[Event] = queue.Queue()
        self.submitted = time.perf_counter()


@dataclass
class _Live:
    """Engine-side state of one request."""

    handle: Handle
    n_prompt: int  # prompt length of the original request (response positions start here)
    experiment: str | None
    tokens: list[int] = field(default_factory=list)  # every generated token, across restarts
    base: int = 0  # tokens generated before the current engine request (after an auto switch)
    text: str = ""  # text sent so far
    values: dict[int, float] = field(default_factory=dict)  # response position -> projection
    prompt_values: dict[int, float] = field(default_factory=dict)
    sent_values: int = 0
    decided: bool = False  # auto: the earlier turns were checked
    triggered_at: int | None = None  # reply token from which capping was on (auto)
    prior_means: list[float] = field(default_factory=list)
    rid: str = ""  # engine request id (internal, as the workers see it)
    first_token_at: float | None = None

    @property
    def wants_probe(self) -> bool:
        """Projections asked for, or needed by auto capping (kept on after a switch: the turn mean covers the whole reply)."""
        req = self.handle.request
        return req.projections or req.auto


def summary_of(live: _Live, finish_reason: str, setup: ServeSetup) -> dict[str, Any]:
    """The ``axis`` object of a finished reply."""
    req = live.handle.request
    values = [live.values[p] for p in sorted(live.values) if p >= live.n_prompt]
    mean = sum(values) / len(values) if values else None
    capped = live.experiment
    return {
        "finish_reason": finish_reason,
        "layer": setup.layer,
        "capping": "auto" if req.auto else (req.experiment or "off"),
        "experiment": capped,
        "capping_triggered": req.auto and live.triggered_at is not None,
        "capped_from_token": live.triggered_at if req.auto else (0 if req.experiment else None),
        "turn_mean": mean if req.projections or req.auto else None,
        "prior_turn_means": live.prior_means,
        "threshold": setup.threshold,
        "n_tokens": len(live.tokens),
        "n_prompt_tokens": live.n_prompt,
        "projections": values if req.projections else None,
    }


def _turn_means(values: dict[int, float], spans: Sequence[tuple[int, int]]) -> list[float]:
    out = []
    for start, stop in spans:
        got = [values[p] for p in range(start, stop) if p in values]
        if got:
            out.append(sum(got) / len(got))
    return out


class Backend:
    """The loop thread and its inbox; subclasses run one engine."""

    name = "base"

    def __init__(self, setup: ServeSetup, tokenizer: Any, eos_ids: Sequence[int], max_model_len: int) -> None:
        self.setup = setup
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.max_model_len = max_model_len
        self.inbox: queue.Queue[tuple[str, Handle]] = queue.Queue()
        self.running = 0
        self.max_running = 0
        self.on_finish: Any = None  # callback(handle, live, finish_reason) for metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(("stop", None))  # type: ignore[arg-type]
        self._thread.join(timeout=10)

    def submit(self, request: GenRequest) -> Handle:
        handle = Handle(request)
        self.inbox.put(("add", handle))
        return handle

    def cancel(self, handle: Handle) -> None:
        self.inbox.put(("cancel", handle))

    def _run(self) -> None:
        try:
            self.loop()
        except Exception:  # the engine died: say so to everyone waiting, keep the process answering /health
            log.exception("engine loop stopped")
            self.dead = True
            self.fail_all("the engine stopped; see the server log")

    dead = False

    def loop(self) -> None:
        raise NotImplementedError

    def fail_all(self, message: str) -> None:
        raise NotImplementedError

    # ---- shared bookkeeping ----
    def _emit(self, live: _Live, new_tokens: Sequence[int]) -> None:
        """Send the text and projections that became final since the last event."""
        if live.first_token_at is None and new_tokens:
            live.first_token_at = time.perf_counter()
        live.tokens.extend(new_tokens)
        shown = [t for t in live.tokens if t not in self.eos_ids]
        text = self.tokenizer.decode(shown, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
            text = live.text
        delta = text[len(live.text):] if text.startswith(live.text) else ""
        live.text = live.text + delta
        values: list[float] = []
        if live.handle.request.projections:
            response = [live.values[p] for p in sorted(live.values) if p >= live.n_prompt]
            values = response[live.sent_values:]
            live.sent_values = len(response)
        if delta or values or new_tokens:
            live.handle.events.put(Event("tokens", delta, list(new_tokens), values))

    def _finish(self, live: _Live, reason: str) -> None:
        self._emit(live, [])
        info = summary_of(live, reason, self.setup)
        if self.on_finish is not None:
            self.on_finish(live, info)
        live.handle.events.put(Event("done", info=info))

    def _auto_check(self, live: _Live) -> str | None:
        """``"prior"`` or ``"drift"`` when an auto request must switch capping on now, else None."""
        req = live.handle.request
        threshold = self.setup.threshold
        if not req.auto or live.triggered_at is not None or threshold is None:
            return None
        if not live.decided:
            live.decided = True
            live.prior_means = _turn_means(live.prompt_values, req.turn_spans)
            if any(m < threshold for m in live.prior_means):
                return "prior"
        response = [v for p, v in live.values.items() if p >= live.n_prompt]
        if len(response) >= AUTO_MIN_TOKENS and sum(response) / len(response) < threshold:
            return "drift"
        return None


class VLLMBackend(Backend):
    """vLLM with the project's worker extension; all requests share engine steps."""

    name = "vllm"

    def __init__(self, setup: ServeSetup, dtype: str = "auto", max_model_len: int = 2048, max_num_seqs: int = 64,
                 kv_cache_gib: float = 2.0) -> None:
        from ..vllm_backend import VLLMEngine

        engine = VLLMEngine(setup.model, dtype=dtype, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                            max_num_seqs=max_num_seqs, max_num_batched_tokens=max(max_model_len, 4096))
        super().__init__(setup, engine.tokenizer, engine.eos_ids, engine.max_model_len)
        self.engine = engine
        if setup.capping is not None:
            for exp in setup.capping.experiments:
                engine.define_experiment(exp)
        engine.define_probe(PROBE, setup.layer, setup.direction)
        self.live: dict[str, _Live] = {}  # external engine id -> live request

    def _params(self, req: GenRequest, experiment: str | None, probe: bool, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from ..vllm_worker import INTERVENTION_KEY, PROBES_KEY

        extra: dict[str, Any] = {}
        if experiment:
            extra[INTERVENTION_KEY] = experiment
        if probe:
            extra[PROBES_KEY] = [PROBE]
        sampling: dict[str, Any] = {"temperature": 0.0} if req.temperature == 0 else {
            "temperature": req.temperature, "top_p": req.top_p, "top_k": 0, "seed": req.seed}
        return SamplingParams(max_tokens=max_tokens, stop_token_ids=self.eos_ids, detokenize=False,
                              output_kind=RequestOutputKind.CUMULATIVE, extra_args=extra or None, **sampling)

    def _enqueue(self, live: _Live, prompt: list[int], max_tokens: int) -> None:
        from vllm.inputs import TokensPrompt

        req = live.handle.request
        params = self._params(req, live.experiment, live.wants_probe, max_tokens)
        # straight to the engine: LLM.enqueue would ask for final outputs only, and the server streams every step
        external = f"s{next(_ids)}"
        live.rid = self.engine.llm.llm_engine.add_request(external, TokensPrompt(prompt_token_ids=prompt), params)
        self.live[external] = live

    def _drop(self, live: _Live, abort: bool) -> None:
        for key in [k for k, v in self.live.items() if v is live]:
            del self.live[key]
        if abort:
            self.engine.llm.llm_engine.abort_request([live.rid], internal=True)

    def _take(self, block: bool) -> bool:
        """Handle the inbox; ``False`` when the server is stopping."""
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return not self._stop.is_set()
        while True:
            kind, handle = item
            if kind == "stop":
                return False
            if kind == "add":
                req = handle.request
                live = _Live(handle, len(req.prompt_ids), req.experiment)
                self._enqueue(live, list(req.prompt_ids), req.max_tokens)
            elif kind == "cancel":
                for live in list(self.live.values()):
                    if live.handle is handle:
                        self._drop(live, abort=True)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return True

    def loop(self) -> None:
        llm_engine = self.engine.llm.llm_engine
        while True:
            if not self._take(block=not self.live):
                break
            self.running = len(self.live)
            if not self.live:
                continue
            self.max_running = max(self.max_running, self.running)
            outputs = llm_engine.step()
            if any(live.wants_probe for live in self.live.values()):
                self._collect(self.engine._pop_results())
            for out in outputs:
                live = self.live.get(out.request_id)
                if live is None:
                    continue
                self._advance(live, out)
            self.running = len(self.live)
        for live in list(self.live.values()):
            self._drop(live, abort=True)
            live.handle.events.put(Event("error", info={"message": "the server is shutting down"}))

    def _collect(self, results: dict[str, dict[str, Any]]) -> None:
        by_rid = {live.rid: live for live in self.live.values()}
        for rid, got in results.items():
            live = by_rid.get(rid)
            if live is None:
                continue
            positions, values = got.get("probes", {}).get(PROBE, ([], []))
            for pos, value in zip(positions, values, strict=True):
                if pos >= live.n_prompt:
                    live.values.setdefault(pos, value)  # after a restart, earlier reply tokens keep their first value
                else:
                    live.prompt_values[pos] = value

    def _advance(self, live: _Live, out: Any) -> None:
        completion = out.outputs[0]
        generated = list(completion.token_ids)
        new = generated[len(live.tokens) - live.base:]
        switch = self._auto_check(live)
        if switch is not None:
            self._switch(live, new if switch == "drift" else [], keep_reply=switch == "drift")
            return
        self._emit(live, new)
        if out.finished:
            self._drop(live, abort=False)
            self._finish(live, "length" if completion.finish_reason == "length" else "stop")

    def _switch(self, live: _Live, new: list[int], keep_reply: bool) -> None:
        """Auto capping switches on: restart the request capped, keeping the reply so far when there is one."""
        req = live.handle.request
        self._drop(live, abort=True)
        if keep_reply:
            self._emit(live, new)
        else:
            live.tokens, live.values, live.first_token_at = [], {}, None
        live.triggered_at = len(live.tokens)
        live.experiment = req.auto_experiment
        live.base = len(live.tokens)
        left = req.max_tokens - len(live.tokens)
        if left <= 0 or (live.tokens and live.tokens[-1] in self.eos_ids):
            self._finish(live, "length" if left <= 0 else "stop")
            return
        self._enqueue(live, list(req.prompt_ids) + live.tokens, left)

    def fail_all(self, message: str) -> None:
        for live in list(self.live.values()):
            live.handle.events.put(Event("error", info={"message": message}))
        self.live.clear()


class HFBackend(Backend):
    """HF transformers where vLLM is not installed: one request at a time, token by token.

    No continuous batching (requests queue in the inbox); capping through
    :class:`~assistant_axis.steering.ActivationSteering`, projections through a forward hook at
    the target layer. After an auto switch the earlier tokens' cached keys and values stay as
    they were computed (uncapped); vLLM recomputes them capped.
    """

    name = "hf"

    def __init__(self, setup: ServeSetup, dtype: str = "auto", max_model_len: int = 2048) -> None:
        from transformers import GenerationConfig

        from ..generation import stop_token_ids
        from ..models import load_model, resolve_model_path

        model, tokenizer = load_model(setup.model, dtype=dtype, device="cpu")
        try:
            gen_config = GenerationConfig.from_pretrained(resolve_model_path(setup.model))
        except OSError:
            gen_config = None
        super().__init__(setup, tokenizer, stop_token_ids(gen_config, tokenizer), max_model_len)
        self.model = model.eval()
        self.cancelled: set[str] = set()
        self.current: _Live | None = None

    def _take(self) -> Handle | None | bool:
        try:
            kind, handle = self.inbox.get(timeout=0.5)
        except queue.Empty:
            return None
        if kind == "stop":
            return False
        if kind == "cancel":
            self.cancelled.add(handle.id)
            return None
        return handle

    def loop(self) -> None:
        pending: list[Handle] = []
        while not self._stop.is_set():
            got = self._take()
            if got is False:
                break
            if isinstance(got, Handle):
                pending.append(got)
            while pending:
                handle = pending.pop(0)
                if handle.id not in self.cancelled:
                    self.running = self.max_running = 1
                    self._serve(handle)
                    self.running = 0
                self.cancelled.discard(handle.id)
                while True:  # requests that arrived meanwhile
                    try:
                        kind, h = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "stop":
                        return
                    if kind == "cancel":
                        self.cancelled.add(h.id)
                    else:
                        pending.append(h)

    def _poll_cancel(self, handle: Handle) -> bool:
        keep = []
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] == "cancel":
                self.cancelled.add(item[1].id)
            else:
                keep.append(item)
        for item in keep:
            self.inbox.put(item)
        return handle.id in self.cancelled

    def _serve(self, handle: Handle) -> None:
        from ..layers import get_layers
        from ..steering import ActivationSteering

        req = handle.request
        live = _Live(handle, len(req.prompt_ids), req.experiment)
        self.current = live
        block = get_layers(self.model)[self.setup.layer]
        direction = self.setup.direction
        position = [0]

        def probe(_m: Any, _a: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            vals = (hidden[0].float() @ direction).tolist()
            for k, v in enumerate(vals):
                p = position[0] + k
                if p >= live.n_prompt:
                    live.values.setdefault(p, v)
                else:
                    live.prompt_values[p] = v

        steerers: dict[str, ActivationSteering] = {}

        def steerer(name: str | None) -> Any:
            if name is None or self.setup.capping is None:
                return contextlib.nullcontext()
            if name not in steerers:
                steerers[name] = ActivationSteering.from_experiment(self.model, self.setup.capping.get(name))
            return steerers[name]


        def forward(input_ids: torch.Tensor, past: Any) -> Any:
            # the probe is hooked after the caps, so it measures the stream the next block reads (as in vLLM)
            with steerer(live.experiment):
                hook = block.register_forward_hook(probe) if live.wants_probe else None
                try:
                    return self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
                finally:
                    if hook is not None:
                        hook.remove()

        generator = torch.Generator().manual_seed(req.seed if req.seed is not None else 0)
        ids = torch.tensor([req.prompt_ids])
        past = None
        reason = "length"
        try:
            with torch.inference_mode():
                for _ in range(req.max_tokens):
                    if self._poll_cancel(handle):
                        return
                    out = forward(ids, past)
                    position[0] += ids.shape[1]
                    past = out.past_key_values
                    logits = out.logits[0, -1].float()
                    if req.temperature == 0:
                        token = int(logits.argmax())
                    else:
                        probs = torch.softmax(logits / req.temperature, -1)
                        sorted_p, order = probs.sort(descending=True)
                        keep = sorted_p.cumsum(0) - sorted_p < req.top_p
                        sorted_p = sorted_p * keep
                        token = int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)])
                    switch = self._auto_check(live)
                    if switch == "prior":
                        live.triggered_at, live.experiment = 0, req.auto_experiment
                        position[0] = 0  # read the prompt again, capped
                        out = forward(torch.tensor([req.prompt_ids]), None)
                        position[0] = len(req.prompt_ids)
                        past = out.past_key_values
                        logits = out.logits[0, -1].float()
                        token = int(logits.argmax()) if req.temperature == 0 else token
                    elif switch == "drift":  # this token was sampled uncapped; the caps act from its forward pass on
                        live.triggered_at, live.experiment = len(live.tokens) + 1, req.auto_experiment
                    self._emit(live, [token])
                    if token in self.eos_ids:
                        reason = "stop"
                        break
                    ids = torch.tensor([[token]])
                    if len(req.prompt_ids) + len(live.tokens) >= self.max_model_len:
                        break
            self._finish(live, reason)
        finally:
            self.current = None

    def fail_all(self, message: str) -> None:
        if self.current is not None:
            self.current.handle.events.put(Event("error", info={"message": message}))


def make_backend(setup: ServeSetup, engine: str = "auto", **kwargs: Any) -> Backend:
    """``auto``: vLLM where it is installed, else HF (with a one-line notice)."""
    from ..models import vllm_available

    if engine == "auto":
        engine = "vllm" if vllm_available() else "hf"
        if engine == "hf":
            log.warning("vLLM is not installed: serving with HF transformers, one request at a time")
    if engine == "vllm":
        return VLLMBackend(setup, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in ("dtype", "max_model_len")}
    return HFBackend(setup, **kwargs)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
