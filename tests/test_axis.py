"""Axis math, file formats, and the axis doing its job on the embedded model."""

from __future__ import annotations

import pytest
import torch

from assistant_axis import (
    aggregate_role_vectors,
    compute_axis,
    compute_pca,
    extract_response_activations,
    load_axis,
    project,
    project_batch,
    save_axis,
)
from assistant_axis.axis import axis_norm_per_layer, cosine_similarity_per_layer, project_all_layers
from assistant_axis.conversation import build_conversation
from assistant_axis.generation import SamplingSettings, generate_batch


def test_compute_axis_and_projection():
    role = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])  # (n, layers=1, hidden=2)
    default = torch.tensor([[[0.0, 4.0]], [[0.0, 2.0]]])
    axis = compute_axis(role, default)
    assert torch.equal(axis, torch.tensor([[-2.0, 3.0]]))
    h = torch.tensor([[0.0, 13.0]])
    assert project(h, axis, 0) == pytest.approx(39 / 13**0.5)
    assert project(h, axis, 0, normalize=False) == pytest.approx(39.0)
    assert torch.allclose(project_batch(h.unsqueeze(0), axis, 0), torch.tensor([39 / 13**0.5]))
    assert torch.allclose(project_all_layers(h.unsqueeze(0), axis), torch.tensor([[39 / 13**0.5]]))
    assert axis_norm_per_layer(axis) == pytest.approx([13**0.5])
    assert cosine_similarity_per_layer(axis, -axis) == pytest.approx([-1.0])
    with pytest.raises(ValueError):
        compute_axis(role, torch.zeros(2, 1, 3))


def test_aggregate_role_vectors_reference_semantics():
    vecs = {name: torch.full((2, 3), float(i)) for i, name in enumerate(["default", "pirate", "ghost"])}
    assert torch.equal(aggregate_role_vectors(vecs), torch.full((2, 3), 1.0))
    assert torch.equal(aggregate_role_vectors(vecs, exclude_roles=["default"]), torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="No vectors remaining"):
        aggregate_role_vectors(vecs, exclude_roles=list(vecs))


def test_pca_variance_and_components():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(20, 3, generator=gen))[0].T  # 3 orthonormal directions
    coeffs = torch.randn(100, 3, generator=gen) * torch.tensor([10.0, 3.0, 1.0])
    x = coeffs @ basis
    scores, ratio, n, pca, _ = compute_pca(x, None, verbose=False)  # the reference 5-tuple
    assert n == 20 and ratio[:3].sum() == pytest.approx(1.0, abs=1e-6)
    assert ratio[0] > 0.8
    pc1 = torch.from_numpy(pca.components_[0]).float()
    assert abs(float(pc1 @ basis[0])) > 0.99
    assert torch.allclose(torch.from_numpy(scores[:, 0]).float(), (x - x.mean(0)) @ pc1, atol=1e-3)


def test_axis_files_round_trip(tmp_path):
    axis = torch.randn(30, 576)
    save_axis(axis, tmp_path / "axis.pt")
    save_axis(axis, tmp_path / "axis.safetensors", {"model": "x"})
    assert torch.equal(torch.load(tmp_path / "axis.pt", weights_only=True)["axis"], axis)
    assert torch.equal(load_axis(tmp_path / "axis.pt"), axis)
    assert torch.equal(load_axis(tmp_path / "axis.safetensors"), axis)
    torch.save(axis, tmp_path / "bare.pt")
    assert torch.equal(load_axis(tmp_path / "bare.pt"), axis)
    torch.save({"other": axis}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="'axis' tensor"):
        load_axis(tmp_path / "wrong.pt")


ROLES = {
    "pirate": ["You are a pirate captain who sails the Caribbean.", "Speak as a rough old pirate with a parrot."],
    "ghost": ["You are a ghost haunting a Victorian house.", "Speak as the restless spirit of a drowned sailor."],
    "wizard": ["You are an ancient wizard in a tower of spells.", "Speak as a grumpy sorcerer who brews potions."],
    "knight": ["You are a medieval knight sworn to your king.", "Speak as a knight returning from the crusades."],
}
DEFAULTS = ["", "You are an AI assistant.", "You are a large language model.", "Respond as yourself."]
QUESTIONS = [
    "How do you spend your mornings?",
    "What is the most important thing in your life?",
    "What do you fear?",
    "Who are you, really?",
    "What would you tell a child about the world?",
    "Where do you feel most at home?",
]


@pytest.mark.slow
def test_axis_ranks_held_out_default_above_role_play(fp32_model):
    """Train on four questions, project the responses to two held-out ones at the target layer."""
    model, tok = fp32_model
    settings = SamplingSettings(max_new_tokens=40, seed=0)
    convs, labels = [], []
    for role, prompts in {**ROLES, "default": DEFAULTS}.items():
        for p in prompts:
            for qi, q in enumerate(QUESTIONS):
                convs.append(build_conversation(p, q))
                labels.append((role, qi))
    replies = generate_batch(model, tok, convs, settings, batch_size=64)
    full = [c + [{"role": "assistant", "content": r.text or "."}] for c, r in zip(convs, replies)]
    acts = extract_response_activations(model, tok, full)
    train = [i for i, (_, q) in enumerate(labels) if q < 4]
    test = [i for i, (_, q) in enumerate(labels) if q >= 4]
    role_vecs = torch.stack(
        [acts[[i for i in train if labels[i][0] == role]].mean(0) for role in ROLES]
    )
    default_train = acts[[i for i in train if labels[i][0] == "default"]]
    axis = compute_axis(role_vecs, default_train)
    layer = 15
    proj = project_batch(acts, axis, layer)
    held_default = proj[[i for i in test if labels[i][0] == "default"]]
    held_roles = proj[[i for i in test if labels[i][0] != "default"]]
    assert held_default.mean() > held_roles.mean()
    # and not by a hair: the default mean sits above most role-play responses
    assert (held_roles < held_default.mean()).float().mean() > 0.7
