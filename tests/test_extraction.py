"""Hook-accumulated means against a plain ``output_hidden_states`` computation, on the embedded model."""

from __future__ import annotations

import torch

from assistant_axis.activations import extract_response_activations, mean_activations_for_spans
from assistant_axis.conversation import build_conversation, encode_conversation
from assistant_axis.layers import get_layers

CONVERSATIONS = [
    build_conversation("You are a ghost in an old house.", "What do you remember?", "The cold stairs, and a song nobody sings now."),
    build_conversation("", "Hi, how are you today?", "Fine, thanks! " * 12),
    build_conversation("You are an AI assistant.", "Explain rain in one line.", "Water vapour condenses into drops heavy enough to fall."),
] + [
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And another one, please?"},
        {"role": "assistant", "content": "Green, like moss after rain."},
    ]
]


def test_hook_means_equal_hidden_state_means(fp32_model):
    model, tok = fp32_model
    n_layers = len(get_layers(model))
    acts = extract_response_activations(model, tok, CONVERSATIONS, max_batch_size=3, turns="last")
    assert acts.shape == (len(CONVERSATIONS), n_layers, model.config.hidden_size)
    assert acts.dtype == torch.float32
    for i, conv in enumerate(CONVERSATIONS):
        enc = encode_conversation(tok, conv)
        a, b = enc.span_of_last("assistant")
        with torch.no_grad():
            hs = model(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
        # HF applies the final norm to its last hidden state; every other layer L is hidden_states[L + 1]
        for layer in range(n_layers - 1):
            ref = hs[layer + 1][0, a:b].mean(0)
            assert (ref - acts[i, layer]).abs().max() < 1e-4, (i, layer)


def test_layer_subset_order_and_early_stop(fp32_model):
    model, tok = fp32_model
    full = extract_response_activations(model, tok, CONVERSATIONS[:2])
    subset = extract_response_activations(model, tok, CONVERSATIONS[:2], layers=[7, 2, -1])
    assert torch.allclose(subset[:, 0], full[:, 7], atol=1e-5)
    assert torch.allclose(subset[:, 1], full[:, 2], atol=1e-5)
    assert torch.allclose(subset[:, 2], full[:, -1], atol=1e-5)

    calls = []
    head = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_response_activations(model, tok, CONVERSATIONS[:1], layers=[3])
    finally:
        head.remove()
    assert calls == []  # the forward pass stopped after block 3: no LM head


def test_batching_does_not_change_results(fp32_model):
    model, tok = fp32_model
    samples = []
    for conv in CONVERSATIONS:
        enc = encode_conversation(tok, conv)
        samples.append((enc.input_ids, enc.span_of_last()))
    one = mean_activations_for_spans(model, samples, [5, 20], max_batch_size=1, progress=False)
    many = mean_activations_for_spans(model, samples, [5, 20], max_batch_size=8, max_batch_tokens=64, progress=False)
    assert torch.allclose(one, many, atol=1e-4)
