"""Method parity with the reference package, number for number, on the embedded model in float32.

Every expected value here is recomputed in the test with plain torch from the formulas in
``/work/shared/NOTES.md`` ("The reference package's public API"): forward hooks written below
apply ``h + c*v``, ``h - <h,u>u + c*v``, ``h - <h,u>u + mean`` and ``h - u*max(<h,u> - tau, 0)``
(``u = v / (||v|| + 1e-8)``) directly to the decoder blocks' outputs, token spans are found from
the rendered text's character offsets, PCA is an SVD. None of the library's own helpers (layer
lookup, span finder, pooling, capping object) is used to build an expected value, so a test fails
whenever the library's reference-compatible call computes something else. Agreement: 1e-4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from assistant_axis import (
    ActivationSteering,
    L2MeanScaler,
    MeanScaler,
    aggregate_role_vectors,
    build_capping_steerer,
    compute_axis,
    compute_pca,
    cosine_similarity_per_layer,
    create_feature_ablation_steerer,
    create_mean_ablation_steerer,
    create_multi_feature_steerer,
    extract_response_activations,
    format_conversation,
    generate_response,
    project,
    project_batch,
)
from assistant_axis.capping import Cap

TOL = 1e-4
Fn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- formulas, written from NOTES.md

def _u(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + 1e-8)


def f_add(v: torch.Tensor, c: float) -> Fn:
    return lambda h: h + c * v


def f_ablate(v: torch.Tensor, c: float) -> Fn:
    u = _u(v)
    return lambda h: h - (h @ u).unsqueeze(-1) * u + c * v


def f_mean_ablate(v: torch.Tensor, mean: torch.Tensor) -> Fn:
    u = _u(v)
    return lambda h: h - (h @ u).unsqueeze(-1) * u + mean


def f_cap(v: torch.Tensor, tau: float) -> Fn:
    u = _u(v)
    return lambda h: h - u * (h @ u - tau).clamp(min=0.0).unsqueeze(-1)


def last_only(fn: Fn) -> Fn:
    def apply(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, -1:] = fn(h[:, -1:])
        return out

    return apply


@contextlib.contextmanager
def formula_hooks(model, per_layer: dict[int, list[Fn]]) -> Iterator[None]:
    """Plain forward hooks on ``model.model.layers[L]`` applying the formulas in order."""
    blocks = model.model.layers

    def make(fns: list[Fn]):
        def hook(_module, _args, out):
            h = out[0] if isinstance(out, tuple) else out
            for fn in fns:
                h = fn(h)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    handles = [blocks[layer].register_forward_hook(make(fns)) for layer, fns in per_layer.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread for this module (restored afterwards): on the shared 2-core machine two
    OpenMP threads run many times slower whenever another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt(fp32_model) -> torch.Tensor:
    _, tok = fp32_model
    text = tok.apply_chat_template([{"role": "user", "content": "Describe a quiet harbour at dawn, please."}],
                                   tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False).input_ids


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


@torch.no_grad()
def _block_out(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    seen = {}
    handle = model.model.layers[layer].register_forward_hook(lambda m, a, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        model(ids)
    finally:
        handle.remove()
    return seen["h"]


def _same(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL, rtol: float = 1e-5) -> None:
    """Elementwise |ours - ref| <= tol + rtol * |ref|.

    The relative part is about 100 float32 ulps: residual-stream values of this model reach the
    hundreds, where one ulp is already 6e-5 to 1.2e-4, so a purely absolute 1e-4 would demand bit
    equality from two different (but equally exact) summation orders.
    """
    excess = (ours - ref).abs() - (tol + rtol * ref.abs())
    worst = int(excess.argmax())
    diff, scale = float((ours - ref).abs().flatten()[worst]), float(ref.abs().flatten()[worst])
    assert float(excess.max()) <= 0, f"|ours - reference| = {diff:.3g} at |reference| = {scale:.3g} > {tol} + {rtol} x |reference|"


def _vec(model, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------- steering

def test_addition_broadcasts_one_layer_index_over_several_vectors(fp32_model, prompt):
    model, _ = fp32_model
    a, b = _vec(model, 1), _vec(model, 2)
    with ActivationSteering(model, [a, b], coefficients=[1.5, -2.0], layer_indices=12):
        ours = _logits(model, prompt)
    with formula_hooks(model, {12: [f_add(a, 1.5), f_add(b, -2.0)]}):
        ref = _logits(model, prompt)
    _same(ours, ref)
    assert float((ref - _logits(model, prompt)).abs().max()) > 0.1  # the steering did something


def test_default_layer_is_the_last_block(fp32_model, prompt):
    model, _ = fp32_model
    v = _vec(model, 3)
    with ActivationSteering(model, v):  # coefficients=1.0, layer_indices=-1
        ours = _logits(model, prompt)
    with formula_hooks(model, {len(model.model.layers) - 1: [f_add(v, 1.0)]}):
        ref = _logits(model, prompt)
    _same(ours, ref)


def test_ablation_adds_back_c_times_the_vector_not_its_unit(fp32_model, prompt):
    model, _ = fp32_model
    v, w = _vec(model, 4, 3.0), _vec(model, 5, 2.0)
    with create_feature_ablation_steerer(model, [v, w], [10, 14], ablation_coefficients=[0.7, 0.0]):
        ours = _logits(model, prompt)
    with formula_hooks(model, {10: [f_ablate(v, 0.7)], 14: [f_ablate(w, 0.0)]}):
        ref = _logits(model, prompt)
    _same(ours, ref)
    with formula_hooks(model, {10: [f_ablate(_u(v), 0.7)], 14: [f_ablate(w, 0.0)]}):  # c * unit(v): not the reference
        other = _logits(model, prompt)
    assert float((other - ref).abs().max()) > 1e-2


def test_mean_ablation(fp32_model, prompt):
    model, _ = fp32_model
    v, mean = _vec(model, 6), _vec(model, 7, 0.5)
    with create_mean_ablation_steerer(model, [v], [mean], 11):
        ours = _logits(model, prompt)
    with formula_hooks(model, {11: [f_mean_ablate(v, mean)]}):
        ref = _logits(model, prompt)
    _same(ours, ref)


def test_multi_feature_steerer_and_last_position(fp32_model, prompt):
    model, _ = fp32_model
    a, b = _vec(model, 8), _vec(model, 9)
    with create_multi_feature_steerer(model, [a, b], [2.0, 1.0], [8, 16], positions="last"):
        ours = _logits(model, prompt)
    with formula_hooks(model, {8: [last_only(f_add(a, 2.0))], 16: [last_only(f_add(b, 1.0))]}):
        ref = _logits(model, prompt)
    _same(ours, ref)
    _same(ours[:, :-1], _logits(model, prompt)[:, :-1])  # earlier positions untouched


def _caps_that_bite(model, prompt, layers: list[int]) -> tuple[list[torch.Tensor], list[float]]:
    """Role-ward vectors leaning on position 0's massive activation, ceilings at the median projection."""
    vectors, taus = [], []
    for i, layer in enumerate(layers):
        h = _block_out(model, prompt, layer)[0]
        v = _u(h[0]) * 2.0 + _u(_vec(model, 20 + i))
        vectors.append(v)
        taus.append(float((h[1:] @ _u(v)).median()))
    return vectors, taus


def test_capping_every_position_including_the_first(fp32_model, prompt):
    model, _ = fp32_model
    layers = [12, 13, 14]
    vectors, taus = _caps_that_bite(model, prompt, layers)
    with ActivationSteering(model, vectors, coefficients=[0.0] * 3, layer_indices=layers, intervention_type="capping",
                            cap_thresholds=taus) as steerer:
        ours = _logits(model, prompt)
    with formula_hooks(model, {layer: [f_cap(v, t)] for layer, v, t in zip(layers, vectors, taus)}):
        ref = _logits(model, prompt)
    _same(ours, ref)
    assert steerer.telemetry_summary()[12]["tokens"] == prompt.shape[1]  # position 0 counted and capped
    # this project's policy (position 0 left alone) is a different computation
    caps = [Cap.from_reference(layer, v, t) for layer, v, t in zip(layers, vectors, taus)]
    with ActivationSteering.from_caps(model, caps):
        skipped = _logits(model, prompt)
    assert float((skipped - ref).abs().max()) > 0.1


def test_capping_last_position_while_generating(fp32_model, prompt):
    """``positions="last"`` during cached generation: each step caps only the newest token."""
    model, tok = fp32_model
    layers = [12, 13]
    vectors, taus = _caps_that_bite(model, prompt, layers)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_scores": True, "return_dict_in_generate": True,
              "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        with ActivationSteering(model, vectors, coefficients=[0.0, 0.0], layer_indices=layers, intervention_type="capping",
                                cap_thresholds=taus, positions="last"):
            ours = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        with formula_hooks(model, {layer: [last_only(f_cap(v, t))] for layer, v, t in zip(layers, vectors, taus)}):
            ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert ours.sequences.tolist() == ref.sequences.tolist()
    for a, b in zip(ours.scores, ref.scores):
        _same(a, b)


def test_build_capping_steerer_on_a_reference_file_caps_as_the_reference(fp32_model, prompt, tmp_path):
    model, _ = fp32_model
    layers = [12, 13, 14]
    vectors, taus = _caps_that_bite(model, prompt, layers)
    config = {  # the published layout, written with plain torch.save
        "vectors": {f"layer_{layer}": {"vector": v, "layer": layer} for layer, v in zip(layers, vectors)},
        "experiments": [{"id": "layers_12:15-p0.25",
                         "interventions": [{"vector": f"layer_{layer}", "cap": t} for layer, t in zip(layers, taus)]}],
    }
    torch.save(config, tmp_path / "capping_config.pt")
    from assistant_axis import load_capping_config

    loaded = load_capping_config(tmp_path / "capping_config.pt")
    with build_capping_steerer(model, loaded, "layers_12:15-p0.25"):
        ours = _logits(model, prompt)
    with build_capping_steerer(model, loaded, 0):
        by_index = _logits(model, prompt)
    with formula_hooks(model, {layer: [f_cap(v, t)] for layer, v, t in zip(layers, vectors, taus)}):
        ref = _logits(model, prompt)
    _same(ours, ref)
    _same(by_index, ref)
    with pytest.raises(ValueError, match="not found"):
        build_capping_steerer(model, loaded, "layers_0:1-p0.5")


def test_reference_argument_errors(fp32_model):
    model, _ = fp32_model
    v = _vec(model, 30)
    with pytest.raises(ValueError, match="coefficients"):
        ActivationSteering(model, [v, v], coefficients=1.0, layer_indices=3)  # one coefficient per vector
    with pytest.raises(ValueError, match="layer_indices"):
        ActivationSteering(model, [v, v, v], coefficients=[1.0] * 3, layer_indices=[1, 2])
    with pytest.raises(ValueError, match="hidden_size"):
        ActivationSteering(model, [v[:10]], coefficients=[1.0], layer_indices=[3])
    with pytest.raises(ValueError, match="mean_ablation only supports"):
        ActivationSteering(model, [v], layer_indices=3, intervention_type="mean_ablation", mean_activations=[v], positions="last")
    with pytest.raises(ValueError, match="cap_thresholds"):
        ActivationSteering(model, [v], coefficients=[0.0], layer_indices=3, intervention_type="capping")
    with pytest.raises(IndexError):
        ActivationSteering(model, [v], coefficients=[1.0], layer_indices=[99])
    with pytest.raises(TypeError):
        ActivationSteering(model, [v], [1.0], [3])  # keyword-only after steering_vectors, as in the reference


# ---------------------------------------------------------------- activations of conversations

MULTI_TURN = [
    {"role": "system", "content": "You are a lighthouse keeper on a remote island."},
    {"role": "user", "content": "What did you see last night?"},
    {"role": "assistant", "content": "A storm rolled in from the west and the lamp burned until dawn."},
    {"role": "user", "content": "Were you afraid?"},
    {"role": "assistant", "content": "No."},
    {"role": "user", "content": "Tell me about the island."},
    {"role": "assistant", "content": "It is small and rocky, with gulls on every ledge and a single well of sweet water."},
]


def _assistant_token_sets(tok, conversation) -> tuple[list[int], list[list[int]]]:
    """Token ids of the rendered conversation and, per assistant message, the tokens inside its content."""
    text = tok.apply_chat_template(conversation, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    turns, pos = [], 0
    for msg in conversation:
        start = text.index(msg["content"], pos)
        end = start + len(msg["content"])
        pos = end
        if msg["role"] == "assistant":
            turns.append([i for i, (s, e) in enumerate(enc["offset_mapping"]) if s >= start and e <= end and e > s])
    return enc["input_ids"], turns


def test_multi_turn_averages_every_assistant_token(fp32_model):
    model, tok = fp32_model
    ids, turns = _assistant_token_sets(tok, MULTI_TURN)
    assert [len(t) for t in turns] == [len(tok(m["content"], add_special_tokens=False).input_ids)
                                       for m in MULTI_TURN if m["role"] == "assistant"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    n = len(model.model.layers) - 1  # HF's last hidden state has the final norm applied: compare blocks 0..n-1
    every = [i for t in turns for i in t]
    expected_all = torch.stack([hidden[layer + 1][0, every].mean(0) for layer in range(n)])
    expected_turns = [torch.stack([hidden[layer + 1][0, t].mean(0) for layer in range(n)]) for t in turns]

    got = extract_response_activations(model, tok, [MULTI_TURN])  # the reference README's call
    _same(got[0, :n], expected_all)
    last = extract_response_activations(model, tok, [MULTI_TURN], turns="last")
    _same(last[0, :n], expected_turns[-1])
    each = extract_response_activations(model, tok, [MULTI_TURN], turns="each")
    assert len(each) == 1 and each[0].shape[0] == 3
    for k in range(3):
        _same(each[0][k, :n], expected_turns[k])
    # token-weighted over all turns, not the mean of the per-turn means
    assert float((expected_all - torch.stack(expected_turns).mean(0)).abs().max()) > 1e-2


def test_projection_axis_and_role_vectors(fp32_model):
    model, tok = fp32_model
    gen = torch.Generator().manual_seed(0)
    n_layers, d = len(model.model.layers), model.config.hidden_size
    roles = {f"r{i}": torch.randn(n_layers, d, generator=gen) for i in range(4)}
    default = torch.randn(3, n_layers, d, generator=gen)
    role_stack = torch.stack(list(roles.values()))
    axis = compute_axis(role_stack, default)
    _same(axis, default.mean(0) - role_stack.mean(0))
    _same(aggregate_role_vectors({**roles, "default": default[0]}, exclude_roles=["default"]), role_stack.mean(0))
    acts = extract_response_activations(model, tok, [MULTI_TURN[:3], MULTI_TURN])
    for layer in (5, 15, 29):
        a = axis[layer]
        want = acts[:, layer] @ a / a.norm()
        assert abs(project(acts[0], axis, layer) - float(want[0])) <= TOL * max(1.0, abs(float(want[0])))
        _same(project_batch(acts, axis, layer), want, TOL * max(1.0, float(want.abs().max())))
        assert project(acts[1], axis, layer, normalize=False) == pytest.approx(float(acts[1, layer] @ a), rel=1e-5)
    cos = cosine_similarity_per_layer(axis, role_stack[0])
    want = torch.stack([(axis[i] @ role_stack[0, i]) / (axis[i].norm() * role_stack[0, i].norm()) for i in range(n_layers)])
    _same(torch.from_numpy(cos), want)


# ---------------------------------------------------------------- PCA

@pytest.mark.parametrize("scaler", [None, "mean", "l2"])
def test_pca_against_an_svd(scaler):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(40, 6, 32, generator=gen) * torch.logspace(0.5, -0.5, 32)).float()  # distinct variances
    layer = 4
    data = x[:, layer].double()
    centred = data - data.mean(0)
    if scaler == "l2":
        centred = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        centred = centred - centred.mean(0)  # sklearn centres once more
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ratio = (s**2 / (s**2).sum()).numpy()
    scores = (centred @ vh.T).numpy()
    obj = {"mean": MeanScaler(), "l2": L2MeanScaler(), None: None}[scaler]
    transformed, variance, n_components, pca, fitted = compute_pca(x, layer, scaler=obj, verbose=False)
    assert n_components == 32 and fitted is obj
    np.testing.assert_allclose(variance, ratio, atol=TOL)
    signs = np.sign((transformed * scores).sum(0))  # component signs are a convention
    np.testing.assert_allclose(transformed * signs, scores, atol=TOL)


# ---------------------------------------------------------------- generation

def test_generate_response_is_the_reference_call(fp32_model):
    """Same seed, same tokens: template, tokenization, sampling settings and decoding as the reference."""
    model, tok = fp32_model
    conversation = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"}]

    def reference_call() -> str:
        prompt = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        inputs = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, temperature=0.7, top_p=0.9, do_sample=True,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0][inputs.input_ids.shape[1]:], skip_special_tokens=True)

    torch.manual_seed(11)
    want = [reference_call(), reference_call()]  # the second call continues the random stream
    torch.manual_seed(11)
    got = [generate_response(model, tok, conversation, max_new_tokens=8), generate_response(model, tok, conversation, max_new_tokens=8)]
    assert got == want
    assert got[0] != got[1]  # no reseeding inside the call
    greedy = generate_response(model, tok, conversation, max_new_tokens=8, do_sample=False)
    assert greedy == generate_response(model, tok, conversation, max_new_tokens=8, do_sample=False)


def test_format_conversation_builds_messages(fp32_model):
    _, tok = fp32_model
    assert format_conversation("Be a pirate.", "Hi?", tok) == [
        {"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"}]
    assert format_conversation("", "Hi?", tok) == [{"role": "user", "content": "Hi?"}]
    assert format_conversation(None, "Hi?", tok) == [{"role": "user", "content": "Hi?"}]
    from tiny_models import build_tokenizer

    gemma = build_tokenizer("gemma2")  # a template without a system role: the instruction joins the user turn
    assert format_conversation("Be a pirate.", "Hi?", gemma) == [{"role": "user", "content": "Be a pirate.\n\nHi?"}]
