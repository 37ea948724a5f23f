"""ProbingModel on the embedded SmolLM2-135M-Instruct (float32, CPU), loaded once for this module.

Generation is checked against transformers driven directly here (chat template + greedy
``model.generate``), not against the project's own generation helpers.
"""

from __future__ import annotations

import pytest
import torch

from assistant_axis.internals import ProbingModel, dtype_name
from assistant_axis.models import DEFAULT_MODEL

SPEC = "embedded:smollm2-135m-instruct"
assert SPEC == DEFAULT_MODEL


@pytest.fixture(scope="module")
def pm() -> ProbingModel:
    return ProbingModel(SPEC, device="cpu", dtype=torch.float32)


def _hf_greedy(pm: ProbingModel, text: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``text`` with transformers alone, cut at the first end-of-sequence token."""
    tok, model = pm.tokenizer, pm.model
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    for i, t in enumerate(new):
        if t in stop:
            new = new[:i]
            break
    return tok.decode(new, skip_special_tokens=True).strip()


def test_shape_facts(pm):
    assert pm.hidden_size == 576
    layers = pm.get_layers()
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == 30
    assert pm.get_layers() is layers  # cached
    assert pm.dtype == torch.float32 and next(pm.model.parameters()).dtype == torch.float32
    assert pm.device == torch.device("cpu")
    assert pm.model_name == SPEC and not pm.model.training
    assert pm.tokenizer.pad_token is not None and pm.tokenizer.padding_side == "left"


def test_layers_are_the_decoder_blocks(pm):
    """Block L's output is hidden_states[L + 1]: the layers are the residual-stream blocks, in order."""
    ids = pm.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    seen = {}
    handle = pm.get_layers()[7].register_forward_hook(
        lambda m, a, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.no_grad():
            hidden = pm.model(ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    assert hidden[8].shape[-1] == pm.hidden_size
    torch.testing.assert_close(seen["h"], hidden[8])


def test_generate_chat_greedy_matches_transformers(pm):
    question = "What is the capital of France?"
    got = pm.generate(question, max_new_tokens=8, do_sample=False)
    prompt = pm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(got, str) and got
    assert got == _hf_greedy(pm, prompt, 8)


def test_generate_accepts_a_conversation(pm):
    conversation = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]
    got = pm.generate(conversation, max_new_tokens=6, do_sample=False)
    prompt = pm.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert got == _hf_greedy(pm, prompt, 6)


def test_generate_raw_continuation(pm):
    text = "The capital of France is"
    got = pm.generate(text, max_new_tokens=8, do_sample=False, chat_format=False)
    ids = pm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = pm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=pm.tokenizer.eos_token_id,
        )
    assert got == pm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert "Paris" in got
    with pytest.raises(TypeError):
        pm.generate([{"role": "user", "content": "hi"}], chat_format=False)


def test_sampled_generation_is_seeded(pm):
    a = pm.generate("Tell me a short story.", max_new_tokens=6, seed=3)
    b = pm.generate("Tell me a short story.", max_new_tokens=6, seed=3)
    assert isinstance(a, str) and a and a == b


def test_from_existing_wraps_without_copying(pm):
    wrapped = ProbingModel.from_existing(pm.model, pm.tokenizer)
    assert wrapped.model is pm.model and wrapped.tokenizer is pm.tokenizer
    assert wrapped.model_name == SPEC  # the spec load_model recorded on the model
    assert wrapped.hidden_size == 576 and len(wrapped.get_layers()) == 30
    assert wrapped.dtype == torch.float32
    assert ProbingModel.from_existing(pm.model, pm.tokenizer, model_name="custom").model_name == "custom"
    assert isinstance(wrapped.generate("Hi!", max_new_tokens=4), str)


def test_dtype_names():
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name(torch.float16) == "float16"
    assert dtype_name(torch.float32) == "float32"
    assert dtype_name("float32") == "float32"
    with pytest.raises(ValueError):
        dtype_name(torch.int8)


def test_max_memory_and_chat_model_name_paths():
    """The max-memory loader (accelerate device_map) and a separately loaded chat tokenizer."""
    other = ProbingModel(SPEC, max_memory_per_gpu={"cpu": "4GiB"}, chat_model_name=SPEC, dtype=torch.float32)
    assert other.device == torch.device("cpu") and other.dtype == torch.float32
    assert other.chat_model_name == SPEC and other.tokenizer.padding_side == "left"
    assert other.hidden_size == 576 and len(other.get_layers()) == 30
    other.close()
    assert other.model is None and other.tokenizer is None
