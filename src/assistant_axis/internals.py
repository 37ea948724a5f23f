"""``ProbingModel``: the reference package's model wrapper, built on this project's loaders.

Reference code passes one object around instead of ``(model, tokenizer)`` pairs; this module gives
that object the reference's name, constructor and core attributes (``model``, ``tokenizer``,
``hidden_size``, ``get_layers()``, ``generate(...)``) so such code runs here, while loading, layer
discovery and generation are the project's own:

* loading: :func:`assistant_axis.models.load_model` (so ``embedded:smollm2-135m-instruct``, a local
  folder and a hub id all work, offline);
* layers: :func:`assistant_axis.layers.get_layers` (one layer convention project-wide: layer ``L``
  is the output of block ``L`` = ``output_hidden_states[L + 1]``);
* chat generation: :func:`assistant_axis.generation.generate_batch` (template handling, seeded
  sampling, stops at the end-of-turn token).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .conversation import Message
from .generation import SamplingSettings, generate_batch
from .layers import get_layers
from .models import load_model, pick_dtype, resolve_model_path

__all__ = ["ProbingModel"]

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def dtype_name(dtype: torch.dtype | str) -> str:
    """The string :func:`load_model` expects for a torch dtype (strings pass through to its own check)."""
    if isinstance(dtype, str):
        return dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype} is not supported; use one of {list(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[dtype]


def _stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """End-of-sequence ids from the generation config and the tokenizer, deduplicated."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]
    ids: list[int] = []
    for value in candidates:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def _load_tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_with_max_memory(spec: str, dtype: torch.dtype, max_memory: dict[Any, str]) -> nn.Module:
    """Shard over devices under per-device memory limits (``load_model`` has no ``max_memory``)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(spec), dtype=dtype, device_map="auto", max_memory=dict(max_memory)
    )
    model.eval()
    model.requires_grad_(False)
    model.name_or_spec = spec
    return model


class ProbingModel:
    """A loaded causal LM and its tokenizer, with helpers for probing and generation.

    Args:
        model_name: ``embedded:<name>``, a local model folder or a hub id.
        device: ``None``/``"auto"`` - all GPUs via ``device_map="auto"`` when there are several (as
            the reference does, for large models), else the one GPU, else the CPU; ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"`` - that single device (the reference may also shard a
            ``"cuda:N"`` model; here it must fit); a dict - a custom ``device_map``.
        max_memory_per_gpu: per-device memory limits such as ``{0: "40GiB", 1: "40GiB"}`` (or
            ``{"cpu": "8GiB"}``); implies ``device_map="auto"`` and overrides ``device``.
        chat_model_name: load the tokenizer (and so the chat template) from another model, for a
            base model probed with its instruct sibling's template.
        dtype: weight dtype (``torch.bfloat16``, ``torch.float16`` or ``torch.float32``, or the
            project's dtype strings).

    The tokenizer gets a pad token (end-of-sequence) when it has none and left padding, as in the
    reference; the model is in eval mode with gradients off.
    """

    def __init__(
        self,
        model_name: str,
        device: str | dict[str, Any] | None = None,
        max_memory_per_gpu: dict[Any, str] | None = None,
        chat_model_name: str | None = None,
        dtype: torch.dtype | str = torch.bfloat16,
    ) -> None:
        name = dtype_name(dtype)
        if max_memory_per_gpu is not None:
            model = _load_with_max_memory(model_name, pick_dtype(name), max_memory_per_gpu)
            tokenizer = None
        elif isinstance(device, dict):
            model, tokenizer = load_model(model_name, dtype=name, device_map=device)  # type: ignore[arg-type]
        elif device in (None, "auto") and torch.cuda.device_count() > 1:
            model, tokenizer = load_model(model_name, dtype=name, device_map="auto")
        else:
            model, tokenizer = load_model(model_name, dtype=name, device=device or "auto")
        if chat_model_name is not None or tokenizer is None:
            tokenizer = _load_tokenizer(chat_model_name or model_name)
        tokenizer.padding_side = "left"
        self.model: nn.Module = model
        self.tokenizer: Any = tokenizer
        self.model_name: str = model_name
        self.chat_model_name: str | None = chat_model_name
        self.dtype: torch.dtype = next(model.parameters()).dtype
        self._layers: nn.ModuleList | None = None

    @classmethod
    def from_existing(cls, model: nn.Module, tokenizer: Any, model_name: str | None = None) -> ProbingModel:
        """Wrap an already-loaded model and tokenizer (neither is copied or modified).

        ``model_name`` defaults to the spec :func:`load_model` recorded on the model, then to its
        ``name_or_path``, then ``"unknown"``.
        """
        self = cls.__new__(cls)
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = (
            model_name or getattr(model, "name_or_spec", None) or getattr(model, "name_or_path", None) or "unknown"
        )
        self.chat_model_name = None
        self.dtype = next(model.parameters()).dtype
        self._layers = None
        return self

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream (the text config's, for multimodal wrappers)."""
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        size = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)
        if size is None:
            raise AttributeError(f"{type(self.model).__name__}: the config has no hidden_size")
        return int(size)

    @property
    def device(self) -> torch.device:
        """Device of the first parameter: where inputs go (the embedding sits there when sharded)."""
        return next(self.model.parameters()).device

    def get_layers(self) -> nn.ModuleList:
        """The decoder blocks (cached); raises ``ValueError`` for an unknown architecture."""
        if self._layers is None:
            self._layers = get_layers(self.model)
        return self._layers

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[Message],
        max_new_tokens: int = 300,
        temperature: float = 0.7,
        do_sample: bool = True,
        chat_format: bool = True,
        top_p: float = 0.9,
        seed: int = 0,
    ) -> str:
        """Generate a reply and return only the new text, stripped of whitespace and special tokens.

        Args:
            prompt: with ``chat_format=True``, a user message (``str``) or a whole conversation (list
                of ``{"role", "content"}`` dicts ending with a user turn), rendered with the chat
                template and generation prompt by :func:`generate_batch`, which also folds a system
                prompt into the user turn for templates without a system role and turns thinking off;
                with ``chat_format=False``, raw text to continue (must be a ``str``).
            max_new_tokens: generation budget (reference default 300).
            temperature, top_p: sampling settings; ``do_sample=False`` or ``temperature <= 0`` is greedy.
            seed: the torch RNG is seeded with it first, so a call is reproducible.

        Generation stops at an end-of-sequence or end-of-turn token. Differences from the reference
        ``ProbingModel.generate`` (which the reference's published API facts do not pin down): no
        ``repetition_penalty=1.1``, ``top_p=0.9`` with ``top_k`` off (the paper's settings, as in
        :func:`generate_batch`) instead of the model's generation-config defaults, special tokens
        are removed from the text, sampling is seeded, and there is no ``swap`` option nor extra
        ``apply_chat_template`` keyword arguments.
        """
        if chat_format:
            conversation = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            settings = SamplingSettings(temperature if do_sample else 0.0, top_p, max_new_tokens, seed)
            return generate_batch(self.model, self.tokenizer, [conversation], settings, batch_size=1)[0].text
        if not isinstance(prompt, str):
            raise TypeError("generate(chat_format=False) continues raw text: pass a str")
        return self._continue_text(prompt, max_new_tokens, temperature, top_p, do_sample and temperature > 0, seed)

    def _continue_text(
        self, text: str, max_new_tokens: int, temperature: float, top_p: float, sample: bool, seed: int
    ) -> str:
        """Plain continuation of ``text`` with no chat template (same sampling rules as chat mode)."""
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        eos = _stop_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if sample
            else {"do_sample": False}
        )
        torch.manual_seed(seed)
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **sampling
        )
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def close(self) -> None:
        """Drop the model and tokenizer so their memory can be freed."""
        self.model = None  # type: ignore[assignment]
        self.tokenizer = None
        self._layers = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"ProbingModel({self.model_name!r}, dtype={self.dtype})"
