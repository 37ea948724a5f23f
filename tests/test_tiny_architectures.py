"""The pipeline's building blocks on tiny random Gemma 2, Qwen3 and Llama 3 models (no hub download).

The models come from :mod:`tiny_models` (built once per session); they have the paper's decoder
classes and each family's real chat-template format, so these tests catch what a ChatML-only
embedded model cannot: Gemma's missing system role and soft-capping, Qwen3's think blocks, Llama 3's
always-present system header, per-family end-of-turn tokens, BOS handling, and vLLM support.

Expected tokens below were written out by hand from the template formats (and checked against the
tokenizer once); they are literal on purpose, so a change in the span finder or a template shows
up as a readable diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import TINY_FAMILIES, TINY_SHAPES, build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from assistant_axis.conversation import (
    SpanError,
    build_conversation,
    encode_conversation,
    format_conversation,
    supports_system_role,
)
from assistant_axis.layers import get_layers

FAMILIES = tuple(TINY_FAMILIES)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """Run this module's HF work on one thread (restored afterwards): on this shared 2-core machine
    two OpenMP threads run 10-40x slower whenever another process is busy, and tiny models gain
    nothing from a second thread (a Gemma forward measured 0.9 s on two threads, 0.02 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per family, built once for the whole session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_hf(tiny_dirs: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    """``(model, tokenizer)`` per family, float32, eager attention.

    Eager, because transformers' default SDPA attention silently skips Gemma 2's attention
    soft-capping (see :func:`test_gemma2_soft_caps_are_active`); eager is exact for all three.
    """
    loaded = {}
    for family, path in tiny_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        loaded[family] = (model, AutoTokenizer.from_pretrained(path))
    return loaded


def _block_outputs(model: Any, layers: list[int], input_ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], Any]:
    """Outputs of decoder blocks ``layers`` (read by forward hooks, as the project reads them) and
    the model output with all hidden states."""
    blocks = get_layers(model)
    seen: dict[int, torch.Tensor] = {}

    def hook_for(layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            seen[layer] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with torch.no_grad():
            output = model(input_ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return seen, output


def _run_script(script: str, args: list[str], env_extra: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter (offline env) and return the JSON it prints last."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The folders themselves
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_complete_and_mirrors_the_real_config(tiny_dirs, family):
    path, info = tiny_dirs[family], TINY_FAMILIES[family]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    config = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(path)
    assert config["architectures"] == [info.architecture]
    assert config["vocab_size"] == len(tok)
    for key, value in TINY_SHAPES.items():
        assert config[key] == value, key
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.convert_tokens_to_ids(list(info.generation_eos))
    assert tok.convert_tokens_to_ids(info.end_of_turn) in generation["eos_token_id"]
    if family == "gemma2":
        assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (50.0, 30.0)
        assert config["sliding_window"] == 4096 and config["tie_word_embeddings"] is True
        assert config["layer_types"] == ["sliding_attention", "full_attention"] * 3
        assert config["query_pre_attn_scalar"] == 16  # hidden / heads, like Gemma-2-27B's 4608 / 32
    elif family == "qwen3":
        assert config["use_sliding_window"] is False and config["tie_word_embeddings"] is False
        assert config["rope_parameters"]["rope_theta"] == 1_000_000.0
        assert generation["top_k"] == 20  # real sampling defaults, which HF generate applies unless overridden
    else:
        rope = config["rope_parameters"]
        assert (rope["rope_type"], rope["rope_theta"], rope["factor"]) == ("llama3", 500000.0, 8.0)
        assert config["tie_word_embeddings"] is False
    weights = load_file(path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert all(torch.equal(t, t.to(torch.bfloat16).float()) for t in weights.values()), "weights must be bf16-exact"


def test_build_is_deterministic_per_seed(tiny_dirs, tmp_path):
    same = load_file(build_tiny_model("gemma2", tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model("gemma2", tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(tiny_dirs["gemma2"] / "model.safetensors")
    assert first.keys() == same.keys() == other.keys()
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny_model("mistral", tmp_path / "nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_special_tokens_and_bos(tiny_hf, family):
    """Control tokens are single tokens; BOS is added by the tokenizer *and* printed by the template
    for Gemma 2 and Llama 3 (so re-tokenizing a rendered chat with special tokens doubles it), never for Qwen3."""
    _, tok = tiny_hf[family]
    info = TINY_FAMILIES[family]
    assert tok.is_fast
    for token in info.special_tokens:
        assert tok.tokenize(f"a{token}b") == ["a", token, "b"], token
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (info.bos_token, info.eos_token, info.pad_token)
    assert tok.chat_template and tok.model_max_length == TINY_SHAPES["max_position_embeddings"]
    plain = tok("Hi")["input_ids"]
    assert (plain[0] == tok.bos_token_id) is info.tokenizer_adds_bos
    text = format_conversation(tok, build_conversation(None, "Hi"))
    assert (info.bos_token is not None and text.startswith(info.bos_token)) is info.template_adds_bos
    if info.tokenizer_adds_bos:  # the double-BOS pitfall: rendered chats must be tokenized without specials
        assert tok(text)["input_ids"][:3] == [tok.bos_token_id, tok.bos_token_id, tok.convert_tokens_to_ids(
            "<start_of_turn>" if family == "gemma2" else "<|start_header_id|>")]
    else:
        assert tok(text)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    if family == "qwen3":  # as in the real tokenizer, <think> is an added token but not a special one
        assert "<think>" not in tok.all_special_tokens
        assert tok.decode(tok("<think>x</think>")["input_ids"], skip_special_tokens=True) == "<think>x</think>"


# ---------------------------------------------------------------------------------------------
# (a) transformers, offline
# ---------------------------------------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    def _refuse(*args, **kwargs):
        raise OSError("network access during an offline load")

    socket.socket.connect = _refuse  # any hub call would fail loudly, not just be skipped
    socket.create_connection = _refuse
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for family, path in json.loads(sys.argv[1]).items():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok(tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                          add_generation_prompt=True, enable_thinking=False),
                  add_special_tokens=False, return_tensors="pt")
        new = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        out[family] = {"class": type(model).__name__, "tokens": new[0, ids["input_ids"].shape[1]:].tolist()}
    print(json.dumps(out))
    """
)


def test_loads_offline_and_generates(tiny_dirs):
    """A fresh process with HF_HUB_OFFLINE=1 and no sockets loads every family and generates."""
    models = json.dumps({f: str(p) for f, p in tiny_dirs.items()})
    got = _run_script(_OFFLINE_SCRIPT, [models], {"OMP_NUM_THREADS": "1"}, timeout=180)
    for family, path in tiny_dirs.items():
        assert got[family]["class"] == TINY_FAMILIES[family].architecture
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok(format_conversation(tok, build_conversation(None, "Hello")), add_special_tokens=False, return_tensors="pt")
        new = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        assert got[family]["tokens"] == new[0, ids["input_ids"].shape[1]:].tolist()
        assert len(got[family]["tokens"]) == 4


# ---------------------------------------------------------------------------------------------
# Chat templates: each family's real rendering format
# ---------------------------------------------------------------------------------------------

LLAMA_HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

PROMPTS = {  # format_conversation(system "You are a pirate.", user "Hi there") with the generation prompt
    "gemma2": "<bos><start_of_turn>user\nYou are a pirate.\n\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "qwen3": "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
             "<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "llama3": LLAMA_HEADER + "You are a pirate.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_prompt_format(tiny_hf, family):
    _, tok = tiny_hf[family]
    assert supports_system_role(tok) is TINY_FAMILIES[family].has_system_role
    assert format_conversation(tok, build_conversation("You are a pirate.", "Hi there")) == PROMPTS[family]


def test_gemma2_template_rules(tiny_hf):
    _, tok = tiny_hf["gemma2"]
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
    conv = [{"role": "user", "content": "  Hi \n"}, {"role": "assistant", "content": "\nAhoy! "}]
    assert tok.apply_chat_template(conv, tokenize=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nAhoy!<end_of_turn>\n"
    )


def test_qwen3_template_rules(tiny_hf):
    _, tok = tiny_hf["qwen3"]
    user = {"role": "user", "content": " Hi "}

    def render(messages: list[dict[str, str]], **kw: Any) -> str:
        return tok.apply_chat_template(messages, tokenize=False, **kw)

    # thinking on (the template default) leaves the generation prompt open; off closes an empty block
    assert render([user], add_generation_prompt=True) == "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n"
    assert render([user], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    # the final assistant turn after the last query gets a think block: empty, or the split-off reasoning
    assert render([user, {"role": "assistant", "content": " Ahoy"}]) == (
        "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n Ahoy<|im_end|>\n"
    )
    thought = {"role": "assistant", "content": "<think>\nplan\n</think>\n\nSail west."}
    assert render([user, thought]).endswith("<|im_start|>assistant\n<think>\nplan\n</think>\n\nSail west.<|im_end|>\n")
    assert render([user, {"role": "assistant", "content": "plan</think>Sail west."}]).endswith(
        "<think>\nplan\n</think>\n\nSail west.<|im_end|>\n"
    )
    # before the last query, assistant turns are bare and their reasoning is dropped
    later = [user, thought, {"role": "user", "content": "And?"}]
    assert render(later) == (
        "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nSail west.<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n"
    )
    # reasoning_content wins over the content split
    assert render([user, {"role": "assistant", "content": "Yes.", "reasoning_content": "\nwhy\n"}]).endswith(
        "<think>\nwhy\n</think>\n\nYes.<|im_end|>\n"
    )


def test_llama3_template_rules(tiny_hf):
    _, tok = tiny_hf["llama3"]
    conv = [{"role": "user", "content": " Hi \n"}, {"role": "assistant", "content": "\nAhoy! "}]
    assert tok.apply_chat_template(conv, tokenize=False) == (
        LLAMA_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy!<|eot_id|>"
    )
    dated = tok.apply_chat_template([{"role": "system", "content": " Be brief. "}] + conv[:1], tokenize=False,
                                    date_string="01 Jan 2025")
    assert dated.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                            "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\nBe brief.<|eot_id|>")


# ---------------------------------------------------------------------------------------------
# (b) span finder against hand-verified token positions
# ---------------------------------------------------------------------------------------------

ONE_TURN = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Ahoy, matey!"},
]
TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Ahoy!"},
    {"role": "user", "content": "Where to?"},
    {"role": "assistant", "content": "The sea."},
]
# SmolLM2's byte-level BPE: "Ġ" is a leading space, "Ċ" a newline; "assistant" is two tokens.
_LLAMA_SYS = ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "Ċ", "Ċ",
              "Cut", "ting", "ĠKnowledge", "ĠDate", ":", "ĠDecember", "Ġ", "2", "0", "2", "3", "Ċ",
              "Today", "ĠDate", ":", "Ġ", "2", "6", "ĠJul", "Ġ", "2", "0", "2", "4"]  # 30 tokens
_HAND_VERIFIED: dict[tuple[str, str], tuple[list[str], list[str], list[tuple[int, int]]]] = {
    # (family, case): (tokens, roles of the prepared messages, content span of each)
    ("gemma2", "one_turn"): (
        ["<bos>", "<start_of_turn>", "user", "Ċ",
         "You", "Ġare", "Ġa", "Ġpirate", ".", "Ċ", "Ċ", "Hi", "Ġthere",  # 4-12: system merged into the user turn
         "<end_of_turn>", "Ċ", "<start_of_turn>", "model", "Ċ",
         "Ah", "oy", ",", "Ġmate", "y", "!",  # 18-23
         "<end_of_turn>", "Ċ"],
        ["user", "assistant"], [(4, 13), (18, 24)],
    ),
    ("gemma2", "two_turns"): (
        ["<bos>", "<start_of_turn>", "user", "Ċ", "Hi", "<end_of_turn>", "Ċ",  # 4
         "<start_of_turn>", "model", "Ċ", "Ah", "oy", "!", "<end_of_turn>", "Ċ",  # 10-12
         "<start_of_turn>", "user", "Ċ", "Where", "Ġto", "?", "<end_of_turn>", "Ċ",  # 18-20
         "<start_of_turn>", "model", "Ċ", "The", "Ġsea", ".", "<end_of_turn>", "Ċ"],  # 26-28
        ["user", "assistant", "user", "assistant"], [(4, 5), (10, 13), (18, 21), (26, 29)],
    ),
    ("qwen3", "one_turn"): (
        ["<|im_start|>", "system", "Ċ", "You", "Ġare", "Ġa", "Ġpirate", ".", "<|im_end|>", "Ċ",  # 3-7
         "<|im_start|>", "user", "Ċ", "Hi", "Ġthere", "<|im_end|>", "Ċ",  # 13-14
         "<|im_start|>", "ass", "istant", "Ċ", "<think>", "ĊĊ", "</think>", "Ċ", "Ċ",  # empty think block: 21-25
         "Ah", "oy", ",", "Ġmate", "y", "!", "<|im_end|>", "Ċ"],  # 26-31
        ["system", "user", "assistant"], [(3, 8), (13, 15), (26, 32)],
    ),
    ("qwen3", "two_turns"): (
        ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>", "Ċ",  # 3
         "<|im_start|>", "ass", "istant", "Ċ", "Ah", "oy", "!", "<|im_end|>", "Ċ",  # 10-12, no think block
         "<|im_start|>", "user", "Ċ", "Where", "Ġto", "?", "<|im_end|>", "Ċ",  # 18-20
         "<|im_start|>", "ass", "istant", "Ċ", "<think>", "ĊĊ", "</think>", "Ċ", "Ċ",  # 27-31
         "The", "Ġsea", ".", "<|im_end|>", "Ċ"],  # 32-34
        ["user", "assistant", "user", "assistant"], [(3, 4), (10, 13), (18, 21), (32, 35)],
    ),
    ("llama3", "one_turn"): (
        [*_LLAMA_SYS, "Ċ", "Ċ", "You", "Ġare", "Ġa", "Ġpirate", ".", "<|eot_id|>",  # 32-36
         "<|start_header_id|>", "user", "<|end_header_id|>", "Ċ", "Ċ", "Hi", "Ġthere", "<|eot_id|>",  # 43-44
         "<|start_header_id|>", "ass", "istant", "<|end_header_id|>", "Ċ", "Ċ",
         "Ah", "oy", ",", "Ġmate", "y", "!", "<|eot_id|>"],  # 52-57
        ["system", "user", "assistant"], [(32, 37), (43, 45), (52, 58)],
    ),
    ("llama3", "two_turns"): (
        [*_LLAMA_SYS, "ĊĊ", "<|eot_id|>",  # empty system prompt: "\n\n" is one token before a special token
         "<|start_header_id|>", "user", "<|end_header_id|>", "Ċ", "Ċ", "Hi", "<|eot_id|>",  # 37
         "<|start_header_id|>", "ass", "istant", "<|end_header_id|>", "Ċ", "Ċ", "Ah", "oy", "!", "<|eot_id|>",  # 45-47
         "<|start_header_id|>", "user", "<|end_header_id|>", "Ċ", "Ċ", "Where", "Ġto", "?", "<|eot_id|>",  # 54-56
         "<|start_header_id|>", "ass", "istant", "<|end_header_id|>", "Ċ", "Ċ", "The", "Ġsea", ".", "<|eot_id|>"],  # 64-66
        ["user", "assistant", "user", "assistant"], [(37, 38), (45, 48), (54, 57), (64, 67)],
    ),
}
_CASES = {"one_turn": ONE_TURN, "two_turns": TWO_TURNS}


@pytest.mark.parametrize(("family", "case"), list(_HAND_VERIFIED))
def test_spans_match_hand_verified_positions(tiny_hf, family, case):
    _, tok = tiny_hf[family]
    tokens, roles, spans = _HAND_VERIFIED[(family, case)]
    enc = encode_conversation(tok, _CASES[case])
    assert tok.convert_ids_to_tokens(enc.input_ids) == tokens
    assert [m["role"] for m in enc.messages] == roles
    assert enc.spans == spans
    assert enc.span_of_last("assistant") == spans[-1]
    # the span is exactly the content: no template token, no end-of-turn token, no think block
    last = tokens[spans[-1][0] : spans[-1][1]]
    assert TINY_FAMILIES[family].end_of_turn not in last and "</think>" not in last
    assert tokens[spans[-1][1]] == TINY_FAMILIES[family].end_of_turn
    # and the ids are the ones the model sees when the same text is tokenized without extra specials
    assert enc.input_ids == tok(enc.text, add_special_tokens=False)["input_ids"]


@pytest.mark.xfail(strict=True, raises=SpanError, reason=(
    "span finder limitation: Qwen3 prints a final turn's reasoning inside its think block, which the "
    "sentinel rendering (no </think> in the sentinel) cannot reproduce, so encode_conversation raises SpanError"))
def test_qwen3_span_of_final_turn_with_reasoning(tiny_hf):
    _, tok = tiny_hf["qwen3"]
    enc = encode_conversation(tok, [{"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "<think>\nplan\n</think>\n\nSail west."}])
    a, b = enc.span_of_last("assistant")
    assert tok.decode(enc.input_ids[a:b]) == "Sail west."


def test_qwen3_reasoning_in_earlier_turns_is_dropped_from_spans(tiny_hf):
    _, tok = tiny_hf["qwen3"]
    enc = encode_conversation(tok, [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nplan\n</think>\n\nSail west."},
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": "Home."},
    ])
    assert [tok.decode(enc.input_ids[a:b]) for a, b in enc.spans] == ["Hi", "Sail west.", "And?", "Home."]
    assert "plan" not in enc.text


# ---------------------------------------------------------------------------------------------
# (c) layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_finder_finds_the_decoder_blocks(tiny_hf, family):
    """Block outputs are the residual stream; ``hidden_states[L + 1]`` equals block L's output for
    every block but the last, where transformers stores the output *after* the final norm."""
    model, tok = tiny_hf[family]
    info = TINY_FAMILIES[family]
    blocks = get_layers(model)
    assert len(blocks) == info.num_layers
    assert {type(b).__name__ for b in blocks} == {info.decoder_layer}
    ids = tok(format_conversation(tok, ONE_TURN, add_generation_prompt=False), add_special_tokens=False, return_tensors="pt")
    seen, output = _block_outputs(model, list(range(info.num_layers)), ids["input_ids"])
    hidden = output.hidden_states
    assert len(hidden) == info.num_layers + 1
    assert all(seen[i].shape[-1] == info.hidden_size for i in seen)
    for layer in range(info.num_layers - 1):
        torch.testing.assert_close(seen[layer], hidden[layer + 1])
    last = info.num_layers - 1
    torch.testing.assert_close(model.model.norm(seen[last]), hidden[last + 1])
    assert not torch.allclose(seen[last], hidden[last + 1])


def test_gemma2_soft_caps_are_active(tiny_hf, tiny_dirs):
    """The tiny Gemma's weights make both soft-caps change its outputs, so a backend that skips them
    is caught. transformers' default attention for Gemma 2 (SDPA) *is* such a backend: it ignores
    ``attn_logit_softcapping``, which is why every HF comparison here uses eager attention."""
    model, tok = tiny_hf["gemma2"]
    ids = tok(format_conversation(tok, ONE_TURN[:2]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        capped = model(ids).logits
        assert capped.abs().max() <= 30.0 and capped.abs().max() > 20.0  # final cap at work
        layers = get_layers(model)
        try:
            for block in layers:
                block.self_attn.attn_logit_softcapping = None
            uncapped = model(ids).logits
        finally:
            for block in layers:
                block.self_attn.attn_logit_softcapping = model.config.attn_logit_softcapping
        sdpa = AutoModelForCausalLM.from_pretrained(tiny_dirs["gemma2"], dtype=torch.float32).eval()
        default = sdpa(ids).logits
    assert sdpa.config._attn_implementation != "eager"
    assert (capped - uncapped).abs().max() > 1.0
    torch.testing.assert_close(default, uncapped, atol=1e-3, rtol=1e-4)  # canary: SDPA drops the attention cap


# ---------------------------------------------------------------------------------------------
# (d) vLLM-CPU
# ---------------------------------------------------------------------------------------------

VLLM_LAYERS = [0, 3, 5]
VLLM_TOKENS = 8
VLLM_CONVS = [
    build_conversation("You are a lighthouse keeper.", "What do you see tonight?"),
    build_conversation(None, "Tell me about yourself."),
]

_VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    def main():
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from assistant_axis.generation import SamplingSettings
        from assistant_axis.vllm_backend import VLLMEngine

        spec = json.loads(open(sys.argv[1]).read())
        out = {}
        for family, path in spec["models"].items():
            start = time.perf_counter()
            # In-process engine and worker (VLLM_ENABLE_V1_MULTIPROCESSING=0, "uni" executor): no
            # process spawns, about 40 s less per engine on this machine.
            gen = VLLMEngine(path, dtype="float32", max_model_len=2048, kv_cache_gib=1,
                                distributed_executor_backend="uni")
            ready = time.perf_counter() - start
            try:
                prompts = gen.render(spec["convs"])
                params = SamplingParams(temperature=0.0, max_tokens=spec["tokens"], ignore_eos=True, logprobs=1)
                raw = gen.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
                greedy = SamplingSettings(temperature=0.0, max_new_tokens=spec["tokens"])
                results, capture = gen.generate_with_activations(spec["convs"], spec["layers"], greedy)
                out[family] = {
                    "engine_s": ready,
                    "max_model_len": gen.llm.llm_engine.model_config.max_model_len,
                    "eos_ids": list(gen.eos_ids),
                    "prompts": prompts,
                    "tokens": [list(r.outputs[0].token_ids) for r in raw],
                    "logprobs": [[lp[t].logprob for t, lp in zip(r.outputs[0].token_ids, r.outputs[0].logprobs)]
                                 for r in raw],
                    "texts": [r.outputs[0].text for r in raw],
                    "n_tokens": [r.n_tokens for r in results],
                    "finished": [r.finished for r in results],
                    "counts": list(capture.counts),
                    "activations": capture.activations.tolist(),
                }
            finally:
                gen.close()
        print(json.dumps(out))

    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def vllm_run(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One subprocess runs vLLM on every family (vllm.LLM must not live in the pytest process)."""
    spec = tmp_path_factory.mktemp("vllm") / "spec.json"
    spec.write_text(json.dumps({"models": {f: str(p) for f, p in tiny_dirs.items()}, "convs": VLLM_CONVS,
                                "tokens": VLLM_TOKENS, "layers": VLLM_LAYERS}))
    start = time.perf_counter()
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    got = _run_script(_VLLM_SCRIPT, [str(spec)], env, timeout=600)
    print(f"\nvLLM subprocess: {time.perf_counter() - start:.1f} s; engines: "
          + ", ".join(f"{f} {r['engine_s']:.1f} s" for f, r in got.items()))
    return got


def _hf_greedy(model: Any, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities, by full forward passes (no generation config involved)."""
    seq, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]), logits_to_keep=1).logits[0, -1].double()
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            seq.append(token)
    return seq[len(prompt) :], logprobs


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_loads_and_generates_like_hf(vllm_run, tiny_hf, family):
    """vLLM-CPU runs each architecture from the tiny folder: same greedy tokens and log-probabilities
    as HF eager float32 (for Gemma 2 that includes both soft-caps), same detokenized text, and the
    end-of-turn token among the stop ids."""
    model, tok = tiny_hf[family]
    run = vllm_run[family]
    assert run["max_model_len"] == 2048
    assert tok.convert_tokens_to_ids(TINY_FAMILIES[family].end_of_turn) in run["eos_ids"]
    for conv, prompt, tokens, logprobs, text in zip(VLLM_CONVS, run["prompts"], run["tokens"], run["logprobs"],
                                                    run["texts"], strict=True):
        assert prompt == tok(format_conversation(tok, conv), add_special_tokens=False)["input_ids"]
        hf_tokens, hf_logprobs = _hf_greedy(model, prompt, VLLM_TOKENS)
        assert tokens == hf_tokens
        assert logprobs == pytest.approx(hf_logprobs, abs=2e-3)
        assert text == tok.decode(tokens, skip_special_tokens=True)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_activation_capture_matches_hf(vllm_run, tiny_hf, family):
    """The project's vLLM worker hooks find each architecture's blocks and capture the same
    residual stream as HF hooks: mean over the response tokens that went back through the model."""
    model, _ = tiny_hf[family]
    run = vllm_run[family]
    for i, prompt in enumerate(run["prompts"]):
        count = run["counts"][i]
        assert count == run["n_tokens"][i] - (0 if run["finished"][i] else 1) and count > 0
        seen, _ = _block_outputs(model, VLLM_LAYERS, torch.tensor([prompt + run["tokens"][i][:count]]))
        expected = torch.stack([seen[layer][0, len(prompt) :].mean(0) for layer in VLLM_LAYERS])
        torch.testing.assert_close(torch.tensor(run["activations"][i]), expected, atol=2e-3, rtol=1e-3)
