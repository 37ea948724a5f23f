"""Malformed-input corpus (issue #14): every input the project reads, broken in the ways files break.

Text cases live in ``tests/data/malformed/<kind>/<case>.<ext>``; tensor cases (axis, capping
vectors, ``.pt`` pickles) are generated here. Each case must be refused with one line naming the
file and the field (never accepted silently, never a bare library error); the CLI and
``snakemake -n`` cases also check exit codes and that no traceback is printed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pipeline_helpers import snakemake, tiny_config, write_config

from assistant_axis.axis import check_axis_layer, load_axis, load_role_vectors, save_axis
from assistant_axis.capping import Cap, CappingConfig, CappingExperiment, load_capping_config
from assistant_axis.cli.common import AxisSource, check_axis_fits, check_capping_fits
from assistant_axis.cli.plan import load_configs
from assistant_axis.models import ModelFacts
from assistant_axis.pipeline.config import read_config_file
from assistant_axis.pipeline.plan import PlanError, prepare
from assistant_axis.roles import RoleSetError, list_roles, load_questions, load_role
from assistant_axis.storage import MAX_INPUT_BYTES, InputError, check_tensor, read_json, save_safetensors
from assistant_axis.transcripts import TranscriptError, load_transcript

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "malformed"
SCHEMA = ROOT / "config" / "config.schema.yaml"
BASE_CONFIG = ROOT / "config" / "config.yaml"

# case -> text the one-line message must contain to name the field (or line) at fault
EXPECTED: dict[str, str] = {
    "roles/missing_instruction.json": "field 'instruction'",
    "roles/renamed_instruction.json": "field 'instruction'",
    "roles/instruction_wrong_type.json": "field 'instruction'",
    "roles/pos_wrong_type.json": "field 'instruction[0].pos'",
    "roles/missing_eval_prompt.json": "field 'eval_prompt'",
    "roles/eval_prompt_no_answer.json": "field 'eval_prompt' lacks the placeholder {answer}",
    "roles/duplicate_key.json": "field 'instruction': appears twice",
    "roles/empty.json": "is empty",
    "roles/whitespace_only.json": "holds only whitespace",
    "roles/top_level_list.json": "the top level must be an object",
    "roles/truncated.json": "not valid JSON (line 1",
    "roles/latin1_encoding.json": "line 1: byte 0xe9 is not valid UTF-8",
    "roles/nan_value.json": "number NaN",
    "roles/huge_number.json": "number 1e999",
    "role_list/duplicate_role.json": "field 'pirate': appears twice",
    "role_list/not_an_object.json": "must be an object mapping role name",
    "role_list/lists_missing_role.json": "lists roles with no file",
    "role_list/bad_encoding.json": "line 1: byte 0xff is not valid UTF-8",
    "questions/missing_question.jsonl": ":2: field 'question'",
    "questions/question_wrong_type.jsonl": ":1: field 'question'",
    "questions/id_wrong_type.jsonl": ":1: field 'id'",
    "questions/id_bool.jsonl": ":1: field 'id'",
    "questions/duplicate_id.jsonl": ":2: field 'id'",
    "questions/duplicate_key.jsonl": ":1: field 'question': appears twice",
    "questions/not_json.jsonl": ":2: not valid JSON",
    "questions/line_not_object.jsonl": ":1: is a JSON list, not an object",
    "questions/empty.jsonl": "is empty",
    "questions/nan_id.jsonl": ":1: number NaN",
    "questions/bad_encoding.jsonl": "line 1: byte 0xe9 is not valid UTF-8",
    "questions/binary_nul.jsonl": "line 2: contains a NUL character",
    "transcripts/missing_conversation.json": "no 'conversation' field",
    "transcripts/missing_content.json": "[1]: missing field 'content'",
    "transcripts/bad_role.json": "[1].role",
    "transcripts/content_wrong_type.json": "[1].content",
    "transcripts/no_assistant.json": "no assistant message",
    "transcripts/empty_conversation.json": "field conversation: the conversation has no messages",
    "transcripts/model_wrong_type.json": "field model",
    "transcripts/duplicate_key.json": "field 'conversation': appears twice",
    "transcripts/empty.json": "is empty",
    "transcripts/not_json.json": "not valid JSON (line 1",
    "transcripts/scalar.json": "got a JSON int",
    "transcripts/bad_encoding.json": "line 1: byte 0xc3 is not valid UTF-8",
    "transcripts/infinity.json": "number Infinity",
    "jailbreaks/missing_request.jsonl": "line 1, field 'request'",
    "jailbreaks/renamed_persona.jsonl": "line 1, field 'persona'",
    "jailbreaks/id_wrong_type.jsonl": "line 1, field 'id'",
    "jailbreaks/duplicate_id.jsonl": "line 2, field 'id'",
    "jailbreaks/duplicate_key.jsonl": ":1: field 'request': appears twice",
    "jailbreaks/empty.jsonl": "is empty",
    "jailbreaks/not_json.jsonl": ":2: not valid JSON",
    "jailbreaks/bad_encoding.jsonl": "line 1: byte 0x92 is not valid UTF-8",
    "mc/three_options.jsonl": "line 1, field 'options'",
    "mc/answer_not_letter.jsonl": "line 1, field 'answer'",
    "mc/answer_index.jsonl": "line 1, field 'answer'",
    "mc/missing_question.jsonl": "line 1, field 'question'",
    "mc/options_wrong_type.jsonl": "line 1, field 'options'",
    "mc/huge_id.jsonl": ":1: number 1e999",
    "rubric/no_answer_placeholder.txt": "placeholder {answer}",
    "rubric/empty.txt": "is empty",
    "rubric/bad_encoding.txt": "line 1: byte 0xa9 is not valid UTF-8",
    "seeds/missing_user_prompt.json": "field 'user_prompt'",
    "seeds/user_prompt_no_topic.json": "field 'user_prompt': lacks the placeholder {topic}",
    "seeds/domains_wrong_type.json": "field 'domains'",
    "seeds/missing_domain.json": "field 'domains.coding'",
    "seeds/seed_missing_opening.json": "field 'domains.coding[0].opening'",
    "seeds/duplicate_key.json": "field 'domains': appears twice",
    "seeds/top_level_list.json": "(top level)",
    "config/duplicate_key.yaml": "config key 'prompts_per_role' appears twice",
    "config/nested_duplicate_key.yaml": "config key 'temperature' appears twice",
    "config/bad_yaml.yaml": "line 3: not valid YAML",
    "config/top_level_list.yaml": "(top level): is a list",
    "config/empty.yaml": "is empty",
    "config/bad_encoding.yaml": "line 1: byte 0xe9 is not valid UTF-8",
    "config/wrong_type.yaml": "config key 'prompts_per_role'",
    "config/renamed_key.yaml": "'prompts_per_rol'",
    "config/nan_value.yaml": "config key 'generation.temperature'",
    "config/inf_value.yaml": "config key 'generation.top_p'",
    "config/negative_count.yaml": "config key 'questions_per_role'",
    "config/wrong_section_type.yaml": "config key 'capping'",
}

CASES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file())
# where each data-file kind goes in the config (checked by prepare, i.e. at snakemake -n time)
DATA_KEYS = {"jailbreaks": ("capping_eval", "jailbreaks"), "mc": ("capping_eval", "mc_file"),
             "rubric": ("capping_eval", "harm_rubric"), "seeds": ("drift", "seeds_file")}


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(EXPECTED) == CASES


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    """The shipped config, narrowed to two roles so each prepare() stays fast."""
    cfg = load_configs([str(BASE_CONFIG)])
    cfg.update(roles=["default", "pirate"], roles_dir=str(ROOT / "resources" / "roles"),
               questions_file=str(ROOT / "resources" / "extraction_questions.jsonl"))
    return cfg


def _prepare(config: dict[str, Any], files: list[str]) -> None:
    prepare(config, SCHEMA, ROOT, files)


def _load_case(kind: str, path: Path, tmp_path: Path, base: dict[str, Any]) -> Any:
    """Read one corpus file the way the project reads that kind of input."""
    if kind == "roles":
        return load_role(path)
    if kind == "role_list":
        roles = tmp_path / "roles"
        (roles / "instructions").mkdir(parents=True)
        for name in ("default", "pirate"):
            src = ROOT / "resources" / "roles" / "instructions" / f"{name}.json"
            (roles / "instructions" / f"{name}.json").write_bytes(src.read_bytes())
        (roles / "role_list.json").write_bytes(path.read_bytes())
        return list_roles(roles)
    if kind == "questions":
        return load_questions(path)
    if kind == "transcripts":
        return load_transcript(path)
    if kind == "config":
        files = [str(BASE_CONFIG), str(path)]
        return _prepare(load_configs(files), files)
    section, key = DATA_KEYS[kind]
    cfg = copy.deepcopy(base)
    cfg[section][key] = str(path)
    if kind == "seeds":
        cfg["drift"].update(enabled=True, domains=["coding"], conversations_per_domain=1)
    return _prepare(cfg, [str(BASE_CONFIG)])


@pytest.mark.parametrize("case", CASES)
def test_malformed_file_is_refused_in_one_line(case: str, tmp_path: Path, base_config: dict[str, Any]) -> None:
    kind = case.split("/")[0]
    path = CORPUS / case
    with pytest.raises((InputError, RoleSetError, TranscriptError, PlanError, ValueError)) as info:
        _load_case(kind, path, tmp_path, base_config)
    message = str(info.value)
    assert "\n" not in message, message
    assert EXPECTED[case] in message, message
    named = "role_list.json" if kind == "role_list" else ("config/config.yaml" if case in CONFIG_SCHEMA_CASES else path.name)
    assert named in message, message


# config cases caught by the schema name the config files given, not the overlay's own name only
CONFIG_SCHEMA_CASES = {f"config/{n}.yaml" for n in ("wrong_type", "renamed_key", "nan_value", "inf_value", "negative_count",
                                                     "wrong_section_type")}


def test_huge_file_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import assistant_axis.storage as storage

    path = tmp_path / "questions.jsonl"
    path.write_text('{"id": 0, "question": "Hi?"}\n' * 200)
    monkeypatch.setattr(storage, "MAX_INPUT_BYTES", 1000)
    with pytest.raises(RoleSetError, match=r"questions\.jsonl: is \d+ bytes, more than the 1000 accepted"):
        load_questions(path)
    assert MAX_INPUT_BYTES >= 64 * 1024 * 1024  # the real limit leaves room for any legitimate input


def test_strict_json_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": [1, 2.5, "caf\xc3\xa9"], "b": {"a": 1}}')  # BOM; the same key in two objects is fine
    assert read_json(path, "fix") == {"a": [1, 2.5, "café"], "b": {"a": 1}}


def test_shipped_config_files_are_strictly_valid() -> None:
    for name in ("config.yaml", "paper.yaml"):
        assert isinstance(read_config_file(ROOT / "config" / name), dict)


# ---------------------------------------------------------------- tensors: axis, role vectors, capping


class _Code:
    """Pickles as a call to print: the smallest 'pickle with code' (weights_only must refuse it)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("this must never run",))


def _axis_case(case: str, path: Path) -> None:
    good = torch.randn(4, 8)
    if case == "nan":
        good[1, 3] = float("nan")
        save_axis(good, path)
    elif case == "inf":
        good[0, 0] = float("inf")
        save_axis(good, path)
    elif case == "zeros":
        save_axis(torch.zeros(4, 8), path)
    elif case == "one_dim":
        save_axis(torch.randn(8), path)
    elif case == "three_dim":
        save_axis(torch.randn(2, 4, 8), path)
    elif case == "int_dtype":
        torch.save({"axis": torch.ones(4, 8, dtype=torch.int64)}, path)
    elif case == "empty_tensor":
        save_axis(torch.zeros(4, 0), path)
    elif case == "renamed_key":
        torch.save({"vector": good}, path)
    elif case == "not_a_tensor":
        torch.save({"axis": [[1.0, 2.0]]}, path)
    elif case == "pickle_with_code":
        torch.save({"axis": good, "hook": _Code()}, path)
    elif case == "garbage":
        path.write_bytes(b"this is not a tensor file\n" * 4)
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "truncated":
        save_axis(good, path)
        path.write_bytes(path.read_bytes()[:-20])
    elif case == "wrong_tensor_name":
        save_safetensors(path, {"direction": good})


AXIS_CASES = {
    ("nan", "pt"): "field 'axis': has 1 non-finite values",
    ("nan", "safetensors"): "field 'axis': has 1 non-finite values",
    ("inf", "safetensors"): "field 'axis': has 1 non-finite values",
    ("zeros", "pt"): "field 'axis': is all zeros",
    ("zeros", "safetensors"): "field 'axis': is all zeros",
    ("one_dim", "pt"): "field 'axis': has shape (8,)",
    ("three_dim", "safetensors"): "field 'axis': has shape (2, 4, 8)",
    ("int_dtype", "pt"): "dtype torch.int64",
    ("empty_tensor", "safetensors"): "field 'axis': is empty",
    ("renamed_key", "pt"): "field 'axis': is missing",
    ("not_a_tensor", "pt"): "field 'axis': is list, not a tensor",
    ("pickle_with_code", "pt"): "(pickle): holds pickled objects or code that weights_only=True refuses",
    ("garbage", "pt"): "(pickle): is not a loadable torch file",
    ("garbage", "safetensors"): "is not a readable safetensors file",
    ("empty_file", "pt"): "is empty",
    ("empty_file", "safetensors"): "is empty",
    ("truncated", "safetensors"): "is not a readable safetensors file",
    ("wrong_tensor_name", "safetensors"): "field 'axis': is missing",
}


@pytest.mark.parametrize(("case", "ext"), sorted(AXIS_CASES))
def test_malformed_axis_is_refused_at_load(case: str, ext: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{case}.{ext}"
    _axis_case(case, path)
    with pytest.raises(InputError) as info:
        load_axis(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and AXIS_CASES[(case, ext)] in message, message
    assert "this must never run" not in capsys.readouterr().out  # the pickled call was not executed


def test_role_vector_files_are_checked(tmp_path: Path) -> None:
    torch.save({"vector": torch.full((4, 8), float("nan")), "type": "pos_3", "role": "pirate"}, tmp_path / "pirate.pt")
    with pytest.raises(InputError, match=r"pirate\.pt: field 'vector': has 32 non-finite"):
        load_role_vectors(tmp_path)
    (tmp_path / "pirate.pt").unlink()
    torch.save({"vector": torch.randn(4, 8), "hook": _Code()}, tmp_path / "ghost.pt")
    with pytest.raises(InputError, match=r"ghost\.pt: \(pickle\)"):
        load_role_vectors(tmp_path)


def _capping(vector: torch.Tensor, floor: float = 1.0) -> CappingConfig:
    return CappingConfig([CappingExperiment("layers_1:2-p0.25", [Cap(1, vector, floor)])])


def test_zero_or_non_finite_capping_vectors_are_refused(tmp_path: Path) -> None:
    # our format: a zero vector would make capping a silent no-op
    from safetensors import safe_open
    from safetensors.torch import save_file

    _capping(torch.randn(8)).save(tmp_path / "good.safetensors")
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as f:
        meta = f.metadata()
    for name, vec in (("zero", torch.zeros(8)), ("nan", torch.full((8,), float("nan"))), ("inf", torch.full((8,), float("inf")))):
        path = tmp_path / f"{name}.safetensors"
        save_file({"layer.1": vec}, str(path), metadata=meta)
        with pytest.raises(InputError, match=rf"{name}\.safetensors: field 'layer\.1': (is all zeros|has 8 non-finite)"):
            CappingConfig.load(path)
    # the reference layout, through both loaders
    ref = _capping(torch.randn(8)).to_reference()
    ref["vectors"]["layer_1"]["vector"] = torch.zeros(8)
    torch.save(ref, tmp_path / "ref.pt")
    for load in (CappingConfig.load, load_capping_config):
        with pytest.raises(ValueError, match=r"ref\.pt: field \"vectors\['layer_1'\]\.vector\": is all zeros"):
            load(tmp_path / "ref.pt")


def test_malformed_capping_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    good = {"layer.1": torch.randn(8)}
    cases = {
        "no_format": ({}, "metadata 'format'"),
        "no_experiments": ({"format": "assistant-axis-capping/1"}, "metadata 'experiments': is missing"),
        "bad_json": ({"format": "assistant-axis-capping/1", "experiments": "[{"}, "metadata 'experiments': not valid JSON"),
        "nan_floor": ({"format": "assistant-axis-capping/1", "experiments": '[{"id": "e", "caps": {"1": NaN}}]'}, "number NaN"),
        "unknown_layer": ({"format": "assistant-axis-capping/1", "experiments": '[{"id": "e", "caps": {"5": 1.0}}]'}, "caps['5']"),
        "bad_policy": ({"format": "assistant-axis-capping/1", "experiments": '[{"id": "e", "caps": {"1": 1.0}}]',
                        "first_token": "sometimes"}, "metadata 'first_token'"),
        "bad_recommended": ({"format": "assistant-axis-capping/1", "experiments": '[{"id": "e", "caps": {"1": 1.0}}]',
                             "recommended": "other"}, "metadata 'recommended'"),
    }
    for name, (meta, field) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(good, str(path), metadata=meta)
        with pytest.raises(InputError) as info:
            CappingConfig.load(path)
        assert f"{name}.safetensors" in str(info.value) and field in str(info.value), str(info.value)
    path = tmp_path / "code.pt"
    torch.save({"vectors": {}, "experiments": [], "x": _Code()}, path)
    with pytest.raises(InputError, match=r"code\.pt: \(pickle\)"):
        CappingConfig.load(path)


FACTS = ModelFacts(name="tiny", short_name="tiny", total_layers=4, target_layer=2, hidden_size=8)


def test_axis_and_capping_must_fit_the_model(tmp_path: Path) -> None:
    def source(t: torch.Tensor) -> AxisSource:
        return AxisSource(t, tmp_path / "axis.safetensors", None, None)

    check_axis_fits(source(torch.randn(4, 8)), "tiny", 2, FACTS)  # fits
    with pytest.raises(InputError, match=r"axis\.safetensors: field 'axis': has 6 layers but tiny has 4"):
        check_axis_fits(source(torch.randn(6, 8)), "tiny", 2, FACTS)
    with pytest.raises(InputError, match=r"field 'axis': has hidden size 16 but tiny has 8"):
        check_axis_fits(source(torch.randn(4, 16)), "tiny", 2, FACTS)
    partial = torch.randn(4, 8)
    partial[2] = 0  # a layer extraction did not store
    with pytest.raises(InputError, match=r"field 'axis' layer 2: is all zeros"):
        check_axis_fits(source(partial), "tiny", 2, FACTS)
    with pytest.raises(InputError, match=r"layer 9 is outside it"):
        check_axis_layer(torch.randn(4, 8), 9, "axis.pt")
    check_capping_fits(_capping(torch.randn(8)), "cap.safetensors", "tiny", FACTS)
    with pytest.raises(InputError, match=r"cap\.safetensors: layer 1 vector: has length 16 but tiny has hidden size 8"):
        check_capping_fits(_capping(torch.randn(16)), "cap.safetensors", "tiny", FACTS)
    far = CappingConfig([CappingExperiment("e", [Cap(7, torch.randn(8), 1.0)])])
    with pytest.raises(InputError, match=r"cap\.safetensors: layer 7: is outside the 4 layers of tiny"):
        check_capping_fits(far, "cap.safetensors", "tiny", FACTS)


@pytest.mark.parametrize("command", ["project", "chat", "generate"])
def test_commands_refuse_files_of_another_model_before_loading_it(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An axis or capping file of another model (4 layers x 8 here) is refused before any weights load."""
    import assistant_axis.models as models
    from assistant_axis.cli import main

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    spec = "embedded:smollm2-135m-instruct"  # 30 layers, hidden size 576: facts from the built-in table
    axis = tmp_path / "axis.safetensors"
    save_axis(torch.randn(4, 8), axis)
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
    capping = tmp_path / "cap.safetensors"
    _capping(torch.randn(8)).save(capping)
    argv = {
        "project": ["project", str(transcript), "--axis", str(axis), "--model", spec],
        "chat": ["chat", "--axis", str(axis), "--model", spec],
        "generate": ["generate", "hi", "--model", spec, "--capping-config", str(capping), "--cap", "layers_1:2-p0.25"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = "cap.safetensors: layer 1 vector: has length 8 but" if command == "generate" else "axis.safetensors: field 'axis': has 4 layers but"
    assert len(err.splitlines()) == 1 and expected in err, err


def test_check_tensor_expected_shape() -> None:
    check_tensor(torch.randn(4, 8), "f", "axis", 2, "fix", shape=(4, None))
    with pytest.raises(InputError, match=r"f: field 'axis': has shape \(3, 8\): 3 layers where 4 are expected; fix"):
        check_tensor(torch.randn(3, 8), "f", "axis", 2, "fix", shape=(4, 8))


# ---------------------------------------------------------------- subprocesses: the CLI and snakemake -n (few: slow)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@pytest.mark.parametrize("case", ["nan_axis", "pickle_with_code", "bad_transcript"])
def test_cli_prints_one_line_and_exits_2(case: str, tmp_path: Path) -> None:
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
    axis = tmp_path / "axis.pt"
    if case == "nan_axis":
        save_axis(torch.full((4, 8), float("nan")), axis)
    elif case == "pickle_with_code":
        torch.save({"axis": torch.randn(4, 8), "hook": _Code()}, axis)
    else:
        save_axis(torch.randn(4, 8), axis)
        transcript.write_bytes(b'[{"role": "user", "content": "\xff"}]')
    proc = subprocess.run(
        [sys.executable, "-m", "assistant_axis.cli", "project", str(transcript), "--axis", str(axis)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "this must never run" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    named = transcript.name if case == "bad_transcript" else axis.name
    assert named in lines[0] and lines[0].startswith("assistant-axis project: error:"), lines[0]


def test_snakemake_dry_run_reports_duplicate_config_key(tmp_path: Path) -> None:
    write_config(tmp_path, tiny_config())
    config = tmp_path / "config" / "config.yaml"
    config.write_text(config.read_text() + "prompts_per_role: 3\n")  # given twice: Snakemake alone keeps the last silently
    proc = snakemake(tmp_path, "-n", check=False, env=_env(), timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output[-3000:]
    assert "config/config.yaml: line" in lines[0] and "config key 'prompts_per_role' appears twice" in lines[0], lines[0]
    assert "Traceback" not in output and 'File "' not in output
