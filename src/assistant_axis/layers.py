"""Find the list of decoder blocks inside a HF model.

One layer convention everywhere in the project: *layer L* is the output of decoder block L, which
is ``output_hidden_states[L + 1]`` in transformers (index 0 there is the embedding output).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

# Attribute paths, tried in order. They cover Llama, Mistral, Qwen2/3, Gemma 2/3 (text and
# multimodal wrappers), GPT-2 and GPT-NeoX; anything else can pass ``layers_path``.
_CANDIDATE_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.language_model.model.layers",
    "language_model.model.layers",
    "model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)


def _walk(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def get_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """Return the decoder blocks of ``model``; ``layers_path`` (e.g. ``"model.layers"``) overrides the search."""
    if layers_path is not None:
        found = _walk(model, layers_path)
        if not isinstance(found, nn.ModuleList):
            raise ValueError(f"layers_path {layers_path!r} does not name a ModuleList on {type(model).__name__}")
        return found
    for path in _CANDIDATE_PATHS:
        found = _walk(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}; pass layers_path='<dotted.path>' "
        f"(tried: {', '.join(_CANDIDATE_PATHS)})"
    )


def check_layer_indices(layers: list[int], n_layers: int) -> list[int]:
    """Validate layer indices (negative ones count from the end) and return them normalised."""
    out = []
    for layer in layers:
        idx = layer + n_layers if layer < 0 else layer
        if not 0 <= idx < n_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {n_layers} layers")
        out.append(idx)
    return out
