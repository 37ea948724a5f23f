"""Role sets and extraction questions, in the reference project's JSON formats, validated.

A roles directory holds ``instructions/<role>.json`` (or the role files directly) and optionally
``role_list.json``. Each role file is::

    {"instruction": [{"pos": "system prompt"}, ...], "eval_prompt": "... {question} ... {answer} ..."}

``default.json`` (the neutral Assistant prompts) has no eval prompt. Questions are JSONL lines of
``{"question": str, "id": int}``. Every problem is reported with the file and the field to fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .storage import InputError, read_json, read_jsonl

DEFAULT_ROLE = "default"
# The placeholders a role file may use: system prompts get the model's short name, the judge
# prompt the question and the answer. Any other {name} would reach the model or the judge verbatim.
PROMPT_PLACEHOLDERS = ("{model_name}",)
EVAL_PLACEHOLDERS = ("{question}", "{answer}")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


class RoleSetError(ValueError):
    """A role or question file is malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Role:
    name: str
    prompts: tuple[str, ...]
    eval_prompt: str | None

    def judge_prompt(self, question: str, answer: str) -> str:
        if self.eval_prompt is None:
            raise RoleSetError(f"role {self.name!r} has no eval_prompt to judge with")
        # str.replace, not str.format: prompts may contain other braces
        return self.eval_prompt.replace("{question}", question).replace("{answer}", answer)


@dataclass(frozen=True)
class Question:
    id: int
    text: str


@dataclass(frozen=True)
class RoleSet:
    """A validated selection of roles and questions: what a run will ask, checked before any job."""

    roles: dict[str, Role]
    questions: list[Question]

    @property
    def names(self) -> list[str]:
        return list(self.roles)


def _unknown_placeholder(text: str, allowed: tuple[str, ...]) -> str | None:
    return next((m for m in _PLACEHOLDER.findall(text) if m not in allowed), None)


def _instructions_dir(roles_dir: Path) -> Path:
    sub = roles_dir / "instructions"
    return sub if sub.is_dir() else roles_dir


def load_role(path: str | os.PathLike[str]) -> Role:
    path = Path(path)
    name = path.stem
    try:
        data = read_json(path, "write the role file as {\"instruction\": [{\"pos\": ...}], \"eval_prompt\": ...} in UTF-8")
    except InputError as exc:
        raise RoleSetError(str(exc)) from exc
    if not isinstance(data, dict):
        raise RoleSetError(f"{path}: the top level must be an object with an 'instruction' list")
    inst = data.get("instruction")
    if not isinstance(inst, list) or not inst:
        raise RoleSetError(f"{path}: field 'instruction' must be a non-empty list of {{\"pos\": \"...\"}} objects")
    prompts = []
    for i, entry in enumerate(inst):
        if not isinstance(entry, dict) or not isinstance(entry.get("pos"), str):
            raise RoleSetError(f"{path}: field 'instruction[{i}].pos' must be a string (the system prompt)")
        if name != DEFAULT_ROLE and not entry["pos"].strip():
            raise RoleSetError(f"{path}: field 'instruction[{i}].pos' is empty; write the role's system prompt")
        bad = _unknown_placeholder(entry["pos"], PROMPT_PLACEHOLDERS)
        if bad:
            raise RoleSetError(
                f"{path}: field 'instruction[{i}].pos' has the unknown placeholder {bad}; "
                f"the only one filled in is {PROMPT_PLACEHOLDERS[0]}"
            )
        prompts.append(entry["pos"])
    eval_prompt = data.get("eval_prompt")
    if name != DEFAULT_ROLE:
        if not isinstance(eval_prompt, str) or not eval_prompt.strip():
            raise RoleSetError(f"{path}: field 'eval_prompt' is missing; add the judge prompt with {{question}} and {{answer}}")
        for slot in EVAL_PLACEHOLDERS:
            if slot not in eval_prompt:
                raise RoleSetError(f"{path}: field 'eval_prompt' lacks the placeholder {slot}; the judge needs it")
        bad = _unknown_placeholder(eval_prompt, EVAL_PLACEHOLDERS)
        if bad:
            raise RoleSetError(
                f"{path}: field 'eval_prompt' has the unknown placeholder {bad}; only {{question}} and {{answer}} are filled in"
            )
    elif eval_prompt is not None and not isinstance(eval_prompt, str):
        raise RoleSetError(f"{path}: field 'eval_prompt' must be a string")
    return Role(name, tuple(prompts), eval_prompt)


def list_roles(roles_dir: str | os.PathLike[str]) -> list[str]:
    """Role names in the directory (``default`` first), validated against ``role_list.json`` if present."""
    roles_dir = Path(roles_dir)
    if not roles_dir.is_dir():
        raise RoleSetError(f"{roles_dir}: roles directory not found (config key 'roles_dir')")
    inst = _instructions_dir(roles_dir)
    names = sorted(p.stem for p in inst.glob("*.json") if p.name != "role_list.json")
    if not names:
        raise RoleSetError(f"{inst}: no role files (*.json) found")
    role_list = roles_dir / "role_list.json"
    if role_list.exists():
        try:  # a role listed twice is a duplicated key: refused by the strict reader
            listed = read_json(role_list, "write role_list.json as an object mapping role name -> description")
        except InputError as exc:
            raise RoleSetError(str(exc)) from exc
        if not isinstance(listed, dict):
            raise RoleSetError(f"{role_list}: must be an object mapping role name -> description")
        missing = sorted(set(listed) - set(names))
        if missing:
            raise RoleSetError(f"{role_list}: lists roles with no file in {inst}: {', '.join(missing[:10])}")
    if DEFAULT_ROLE in names:
        names.remove(DEFAULT_ROLE)
        names.insert(0, DEFAULT_ROLE)
    return names


def select_roles(roles_dir: str | os.PathLike[str], wanted: str | list[str]) -> list[str]:
    """The config's ``roles`` (``"all"`` or a list) checked against the roles directory."""
    available = list_roles(roles_dir)
    if wanted == "all":
        return available
    twice = sorted({n for n in wanted if list(wanted).count(n) > 1})
    if twice:
        raise RoleSetError(f"config key 'roles': {', '.join(twice)} listed more than once; name each role once")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise RoleSetError(f"{roles_dir}: no role file for {', '.join(unknown[:10])} (config key 'roles')")
    return list(wanted)


def role_file(roles_dir: str | os.PathLike[str], name: str) -> str:
    """The file that defines role ``name`` (in ``instructions/`` when the directory has one).

    The workflow declares it as an input of the jobs that read it, so editing one role reruns the
    jobs of that role's shard only; the path keeps ``roles_dir`` as given (relative stays relative).
    """
    return str(_instructions_dir(Path(roles_dir)) / f"{name}.json")


def load_roles(roles_dir: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, Role]:
    """Load and validate roles (all, or ``names``); raises :class:`RoleSetError` on the first bad file."""
    roles_dir = Path(roles_dir)
    wanted = select_roles(roles_dir, "all" if names is None else names)
    inst = _instructions_dir(roles_dir)
    return {name: load_role(inst / f"{name}.json") for name in wanted}


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise RoleSetError(f"{path}: questions file not found (config key 'questions_file')")
    out: list[Question] = []
    seen: set[int] = set()
    try:
        rows = read_jsonl(path, 'write one {"id": int, "question": str} object per line, in UTF-8')
    except InputError as exc:
        raise RoleSetError(str(exc)) from exc
    for lineno, obj in rows:
        if not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise RoleSetError(f"{path}:{lineno}: field 'question' must be a non-empty string")
        qid = obj.get("id", len(out))
        if isinstance(qid, bool) or not isinstance(qid, int) or qid in seen:
            raise RoleSetError(f"{path}:{lineno}: field 'id' must be a unique integer (got {qid!r})")
        seen.add(qid)
        out.append(Question(qid, obj["question"]))
    if not out:
        raise RoleSetError(f"{path}: no questions")
    return out


def check_role_set(
    roles_dir: str | os.PathLike[str],
    wanted: str | list[str],
    questions_file: str | os.PathLike[str],
    *,
    n_prompts: int,
    n_default_prompts: int,
    n_questions: int,
) -> RoleSet:
    """Load and check everything generation will read, before any job: role files, questions, counts.

    Besides the per-file checks of :func:`load_role` and :func:`load_questions`, every selected role
    must have the system prompts the config asks for and the questions file enough questions, so
    the run has the size its plan states.
    """
    roles = load_roles(roles_dir, None if wanted == "all" else list(wanted))
    inst = _instructions_dir(Path(roles_dir))
    for name, role in roles.items():
        need, key = (n_default_prompts, "default_prompts") if name == DEFAULT_ROLE else (n_prompts, "prompts_per_role")
        if len(role.prompts) < need:
            raise RoleSetError(
                f"{inst / (name + '.json')}: field 'instruction' has {len(role.prompts)} prompts but config key "
                f"'{key}' asks for {need}; add prompts or lower {key}"
            )
    questions = load_questions(questions_file)
    if len(questions) < n_questions:
        raise RoleSetError(
            f"{questions_file}: {len(questions)} questions but config key 'questions_per_role' asks for {n_questions}; "
            "add questions or lower questions_per_role"
        )
    return RoleSet(roles, questions[:n_questions])
