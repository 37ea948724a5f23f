"""Role sets: ours and the reference's validate; broken files get errors naming file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assistant_axis.roles import DEFAULT_ROLE, RoleSetError, list_roles, load_questions, load_roles

REPO = Path(__file__).resolve().parents[1]
OURS = REPO / "resources" / "roles"
REFERENCE = REPO.parent / "shared" / "reference" / "assistant-axis-data"


def test_our_role_set_is_complete():
    roles = load_roles(OURS)
    assert len(roles) == 276 and list(roles)[0] == DEFAULT_ROLE
    assert len(roles[DEFAULT_ROLE].prompts) == 5 and roles[DEFAULT_ROLE].eval_prompt is None
    for name, role in roles.items():
        if name == DEFAULT_ROLE:
            continue
        assert len(role.prompts) == 5 and len(set(role.prompts)) == 5, name
        assert "{model_name}" not in " ".join(role.prompts)
        prompt = role.judge_prompt("Q?", "A!")
        assert "Q?" in prompt and "A!" in prompt and "{" not in prompt, name
    questions = load_questions(REPO / "resources" / "extraction_questions.jsonl")
    assert len(questions) == 240 and len({q.text for q in questions}) == 240


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference data not beside the repo")
def test_reference_role_set_loads():
    roles = load_roles(REFERENCE / "roles")
    assert len(roles) == 276
    assert len(load_questions(REFERENCE / "extraction_questions.jsonl")) == 240


def _copy_roles(tmp_path: Path, names: list[str]) -> Path:
    dest = tmp_path / "roles" / "instructions"
    dest.mkdir(parents=True)
    for n in names:
        shutil.copy(OURS / "instructions" / f"{n}.json", dest / f"{n}.json")
    return tmp_path / "roles"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"pirate\.json: not valid JSON"),
        (json.dumps({"instruction": []}), r"pirate\.json: field 'instruction'"),
        (json.dumps({"instruction": [{"neg": "x"}], "eval_prompt": "{question}{answer}"}), r"pirate\.json: field 'instruction\[0\]\.pos'"),
        (json.dumps({"instruction": [{"pos": "You are a pirate."}]}), r"pirate\.json: field 'eval_prompt' is missing"),
        (json.dumps({"instruction": [{"pos": "You are a pirate."}], "eval_prompt": "{question} only"}), r"lacks the placeholder \{answer\}"),
    ],
)
def test_broken_role_file(tmp_path, content, match):
    roles_dir = _copy_roles(tmp_path, ["default", "ghost"])
    (roles_dir / "instructions" / "pirate.json").write_text(content)
    with pytest.raises(RoleSetError, match=match):
        load_roles(roles_dir)


def test_role_list_must_match_files(tmp_path):
    roles_dir = _copy_roles(tmp_path, ["default", "ghost"])
    (roles_dir / "role_list.json").write_text(json.dumps({"ghost": "x", "pirate": "y"}))
    with pytest.raises(RoleSetError, match="role_list.json: lists roles with no file.*pirate"):
        list_roles(roles_dir)
    with pytest.raises(RoleSetError, match="no role file for wizard"):
        load_roles(_copy_roles(tmp_path / "b", ["ghost"]), ["wizard"])


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"question": "a", "id": 0}', '{"question": "b", "id": 0}'], r"q\.jsonl:2: field 'id'"),
        (['{"question": ""}'], r"q\.jsonl:1: field 'question'"),
        (["nope"], r"q\.jsonl:1: not valid JSON"),
    ],
)
def test_broken_questions(tmp_path, lines, match):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(RoleSetError, match=match):
        load_questions(path)
