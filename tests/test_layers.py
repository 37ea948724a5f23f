"""Decoder blocks are found in every supported architecture family (tiny random models, no download)."""

from __future__ import annotations

import pytest
import torch
import transformers

from assistant_axis.layers import check_layer_indices, get_layers

FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8}),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 3, "n_head": 4}),
    "gpt_neox": ("GPTNeoXConfig", {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_finds_blocks_and_their_outputs_are_hidden_states(family):
    cls_name, extra = FAMILIES[family]
    common = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 4}
    config = getattr(transformers, cls_name)(**{**common, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    blocks = get_layers(model)
    assert len(blocks) == 3
    seen = {}
    handle = blocks[1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hs = model(torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True).hidden_states
    handle.remove()
    assert torch.allclose(seen["h"], hs[2], atol=1e-5)  # layer 1 = output of block 1 = hidden_states[2]


def test_explicit_path_and_errors():
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    assert get_layers(model, "model.layers") is model.model.layers
    with pytest.raises(ValueError, match="does not name a ModuleList"):
        get_layers(model, "model.norm")
    with pytest.raises(ValueError, match="cannot find the decoder blocks"):
        get_layers(torch.nn.Linear(2, 2))
    assert check_layer_indices([0, -1], 30) == [0, 29]
    with pytest.raises(ValueError, match="out of range"):
        check_layer_indices([30], 30)
