"""The math of each steering operation, on the embedded model's real block outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant_axis.axis import unit
from assistant_axis.capping import Cap, CappingConfig, calibrate
from assistant_axis.conversation import format_conversation
from assistant_axis.layers import get_layers
from assistant_axis.steering import ActivationSteering, build_capping_steerer

LAYER = 12


def _block_outputs(model, ids, layers):
    """Outputs of blocks after all hooks (registered last, so they run last)."""
    seen = {}
    handles = [
        get_layers(model)[layer].register_forward_hook(lambda m, a, o, layer=layer: seen.__setitem__(layer, o[0] if isinstance(o, tuple) else o))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    text = format_conversation(tokenizer, [{"role": "user", "content": "Describe a quiet harbour at dawn."}])
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def _single_layer_io(model, ids, steerer):
    """Input of block LAYER+1 unsteered vs steered equals block LAYER's output: compare them directly."""
    base = _block_outputs(model, ids, [LAYER])[LAYER].clone()
    with steerer:
        steered = _block_outputs(model, ids, [LAYER])[LAYER].clone()
    return base, steered


def test_addition(fp32_model, prompt_ids):
    model, _ = fp32_model
    v = torch.randn(model.config.hidden_size)
    base, steered = _single_layer_io(model, prompt_ids, ActivationSteering(model, [v], coefficients=[2.5], layer_indices=[LAYER]))
    assert torch.allclose(steered, base + 2.5 * v, atol=1e-4)


def test_ablation_and_mean_ablation(fp32_model, prompt_ids):
    model, _ = fp32_model
    v = torch.randn(model.config.hidden_size)
    u = unit(v)
    base, steered = _single_layer_io(
        model, prompt_ids, ActivationSteering(model, [v], coefficients=[0.0], layer_indices=[LAYER], intervention_type="ablation")
    )
    assert torch.allclose(steered @ u, torch.zeros(steered.shape[:2]), atol=1e-3)
    assert torch.allclose(steered, base - (base @ u).unsqueeze(-1) * u, atol=1e-4)
    # a non-zero coefficient adds back c * v (the vector as given), not c * unit(v)
    _, steered = _single_layer_io(
        model, prompt_ids, ActivationSteering(model, [v], coefficients=[0.5], layer_indices=[LAYER], intervention_type="ablation")
    )
    assert torch.allclose(steered, base - (base @ u).unsqueeze(-1) * u + 0.5 * v, atol=1e-4)
    mean = torch.randn(model.config.hidden_size)
    _, steered = _single_layer_io(
        model, prompt_ids, ActivationSteering(model, [v], layer_indices=[LAYER], intervention_type="mean_ablation", mean_activations=[mean])
    )
    assert torch.allclose(steered, base - (base @ u).unsqueeze(-1) * u + mean, atol=1e-4)


def test_last_position_only(fp32_model, prompt_ids):
    model, _ = fp32_model
    v = torch.randn(model.config.hidden_size)
    base, steered = _single_layer_io(model, prompt_ids, ActivationSteering(model, [v], coefficients=[1.0], layer_indices=[LAYER], positions="last"))
    assert torch.allclose(steered[:, :-1], base[:, :-1], atol=1e-5)
    assert torch.allclose(steered[:, -1], base[:, -1] + v, atol=1e-4)


def test_reference_capping_is_a_ceiling(fp32_model, prompt_ids):
    model, _ = fp32_model
    v = torch.randn(model.config.hidden_size)
    base = _block_outputs(model, prompt_ids, [LAYER])[LAYER]
    tau = float((base[0, 1:] @ unit(v)).median())
    with ActivationSteering(
        model, [v], coefficients=[0.0], layer_indices=[LAYER], intervention_type="capping", cap_thresholds=[tau]
    ) as st:
        steered = _block_outputs(model, prompt_ids, [LAYER])[LAYER]
    proj = steered[0] @ unit(v)
    assert proj.max() <= tau + 1e-3  # every position, position 0 included (the reference's capping)
    assert st.telemetry_summary()[LAYER]["tokens"] == prompt_ids.shape[1]
    assert st.telemetry_summary()[LAYER]["capped"] > 0


def test_floor_holds_at_every_capped_layer_and_spares_position_zero(fp32_model, prompt_ids):
    model, _ = fp32_model
    layers = [10, 11, 12, 13]
    vecs = {layer: unit(torch.randn(model.config.hidden_size)) for layer in layers}
    base = _block_outputs(model, prompt_ids, layers)
    floors = {layer: float((base[layer][0, 1:] @ vecs[layer]).quantile(0.75)) for layer in layers}
    steerer = ActivationSteering.from_caps(model, [Cap.along(layer, vecs[layer], floors[layer]) for layer in layers])
    with steerer:
        out = _block_outputs(model, prompt_ids, layers)
    for layer in layers:
        proj = out[layer][0] @ vecs[layer]
        assert proj[1:].min() >= floors[layer] - 1e-3, layer
    # position 0 (the massive-activation first token) is left alone by default
    tel = steerer.telemetry_summary()
    assert all(t["tokens"] == prompt_ids.shape[1] - 1 for t in tel.values())
    assert all(t["capped"] > 0 and t["mean_correction"] > 0 for t in tel.values())


def test_cap_floor_math_and_first_token_mask():
    h = torch.tensor([[3.0, 0.0], [-2.0, 5.0], [0.5, 1.0]])
    cap = Cap(0, torch.tensor([1.0, 0.0]), 1.0)
    out, deficit = cap.apply(h)
    assert torch.equal(out, torch.tensor([[3.0, 0.0], [1.0, 5.0], [1.0, 1.0]]))
    assert torch.equal(deficit, torch.tensor([0.0, 3.0, 0.5]))
    allowed = torch.tensor([True, False, True])
    out, deficit = cap.apply(h, allowed)
    assert torch.equal(out[1], h[1]) and torch.equal(deficit, torch.tensor([0.0, 0.0, 0.5]))
    # the reference form is the same operation: a ceiling -floor on the role-ward vector -v
    u, ceiling = cap.to_reference()
    assert torch.equal(u, -cap.vector) and ceiling == -1.0
    back = Cap.from_reference(0, 3 * u, ceiling)
    assert torch.allclose(back.vector, cap.vector) and back.floor == cap.floor
    assert Cap.from_wire(cap.to_wire()).floor == 1.0
    with pytest.raises(ValueError, match="no direction"):
        Cap.along(3, torch.zeros(2), 0.0)


def _pre_hook_outputs(model, ids, layers, steerer):
    """Each block's output as the steerer's cap receives it: hooks registered before the steerer's run first."""
    seen = {}
    handles = [
        get_layers(model)[layer].register_forward_hook(lambda m, a, o, layer=layer: seen.__setitem__(layer, (o[0] if isinstance(o, tuple) else o).clone()))
        for layer in layers
    ]
    try:
        with steerer, torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_capping_config_from_calibration_builds_a_steerer_with_exact_telemetry(fp32_model, prompt_ids, tmp_path):
    """Telemetry values (not just its keys) equal counts computed here from the activations each cap saw."""
    model, _ = fp32_model
    layers = [10, 11, 12, 13]
    n_layers = len(get_layers(model))
    axis = torch.randn(n_layers, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    # calibrate on this prompt's own unsteered projections (+0.01, so no token sits exactly on a floor)
    # so the 75th-percentile floors fall inside the range the caps will see
    hidden = model(prompt_ids, output_hidden_states=True).hidden_states
    proj = torch.stack([hidden[layer + 1][0] @ unit(axis[layer]) for layer in range(n_layers)], 1).detach() + 0.01
    cfg = calibrate(proj, axis, [(10, 14)], [0.25])
    cfg.save_reference(tmp_path / "capping_config.pt")
    loaded = torch.load(tmp_path / "capping_config.pt", weights_only=True)
    steerer = build_capping_steerer(model, loaded, "layers_10:14-p0.25")
    seen = _pre_hook_outputs(model, prompt_ids, layers, steerer)
    tel = steerer.telemetry_summary()
    assert sorted(tel) == layers
    n_tokens = prompt_ids.shape[1]
    for layer in layers:
        floor = float(np.quantile(proj[:, layer].double().numpy(), 0.75))
        p = (seen[layer][0].double() @ unit(axis[layer]).double()).numpy()
        below = p < floor
        assert 0 < below.sum() < n_tokens, layer  # the cap acts on some positions, not all
        # the reference dict caps every position, position 0 included
        assert tel[layer]["tokens"] == n_tokens
        assert tel[layer]["capped"] == int(below.sum()), layer
        assert tel[layer]["mean_correction"] == pytest.approx(float((floor - p[below]).mean()), rel=1e-4, abs=1e-4)
    assert isinstance(CappingConfig.from_reference(loaded), CappingConfig)
