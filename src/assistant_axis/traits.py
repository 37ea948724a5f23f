"""Trait sets in the reference project's ``traits/`` format, validated (the trait analogue of :mod:`.roles`).

Why: the paper interprets the Assistant Axis by comparing it with *trait vectors* (the activation
difference between replies that show a trait and replies that avoid it). The reference ships the
data for that and no code, so this module reads its format, and the project's own set in
``resources/traits/`` uses the same format::

    traits/trait_list.json              {"trait": "one-line description", ...}
    traits/instructions/<trait>.json    {"instruction": [{"pos": str, "neg": str} x 5],
                                         "questions": [str x 40],
                                         "eval_prompt": "... {question} ... {answer} ..."}

The eval prompt asks a judge for ``REFUSAL`` or one number 0-100 (how strongly the reply shows the
trait). Every problem is reported in one line naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

EVAL_PLACEHOLDERS = ("{question}", "{answer}")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
SIDES = ("pos", "neg")


class TraitSetError(ValueError):
    """A trait file is malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Trait:
    """One trait: its description, ``(positive, negative)`` instruction pairs, questions and judge prompt."""

    name: str
    description: str
    pairs: tuple[tuple[str, str], ...]
    questions: tuple[str, ...]
    eval_prompt: str

    def instruction(self, side: str, pair: int) -> str:
        """The system prompt of ``side`` (``pos`` or ``neg``) in pair ``pair``."""
        return self.pairs[pair][SIDES.index(side)]

    def judge_prompt(self, question: str, answer: str) -> str:
        # str.replace, not str.format: replies may contain braces
        return self.eval_prompt.replace("{question}", question).replace("{answer}", answer)


def _instructions_dir(traits_dir: Path) -> Path:
    sub = traits_dir / "instructions"
    return sub if sub.is_dir() else traits_dir


def load_trait(path: str | os.PathLike[str], description: str = "") -> Trait:
    """Read and check one ``<trait>.json`` file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TraitSetError(f"{path}: trait file not found") from exc
    except json.JSONDecodeError as exc:
        raise TraitSetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise TraitSetError(f"{path}: the top level must be an object with 'instruction', 'questions' and 'eval_prompt'")
    inst = data.get("instruction")
    if not isinstance(inst, list) or not inst:
        raise TraitSetError(f"{path}: field 'instruction' must be a non-empty list of {{\"pos\": ..., \"neg\": ...}} objects")
    pairs = []
    for i, entry in enumerate(inst):
        for side in SIDES:
            text = entry.get(side) if isinstance(entry, dict) else None
            if not isinstance(text, str) or not text.strip():
                what = "system prompt that asks for the trait" if side == "pos" else "system prompt that asks to avoid it"
                raise TraitSetError(f"{path}: field 'instruction[{i}].{side}' must be a non-empty string (the {what})")
            bad = _PLACEHOLDER.search(text)
            if bad:
                raise TraitSetError(f"{path}: field 'instruction[{i}].{side}' has the placeholder {bad.group()}; trait prompts take none")
        pairs.append((entry["pos"], entry["neg"]))
    questions = data.get("questions")
    if not isinstance(questions, list) or not questions:
        raise TraitSetError(f"{path}: field 'questions' must be a non-empty list of strings")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise TraitSetError(f"{path}: field 'questions[{i}]' must be a non-empty string")
    eval_prompt = data.get("eval_prompt")
    if not isinstance(eval_prompt, str) or not eval_prompt.strip():
        raise TraitSetError(f"{path}: field 'eval_prompt' is missing; add the 0-100 judge prompt with {{question}} and {{answer}}")
    for slot in EVAL_PLACEHOLDERS:
        if slot not in eval_prompt:
            raise TraitSetError(f"{path}: field 'eval_prompt' lacks the placeholder {slot}; the judge needs it")
    bad = next((m for m in _PLACEHOLDER.findall(eval_prompt) if m not in EVAL_PLACEHOLDERS), None)
    if bad:
        raise TraitSetError(f"{path}: field 'eval_prompt' has the unknown placeholder {bad}; only {{question}} and {{answer}} are filled in")
    return Trait(path.stem, description, tuple(pairs), tuple(questions), eval_prompt)


def read_trait_list(traits_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``trait -> description`` from ``trait_list.json``, checked against the instruction files."""
    traits_dir = Path(traits_dir)
    if not traits_dir.is_dir():
        raise TraitSetError(f"{traits_dir}: traits directory not found (config key 'trait_vectors.traits_dir')")
    listing = traits_dir / "trait_list.json"
    inst = _instructions_dir(traits_dir)
    files = sorted(p.stem for p in inst.glob("*.json") if p.name != "trait_list.json")
    if not listing.is_file():
        if not files:
            raise TraitSetError(f"{inst}: no trait files (*.json) and no trait_list.json")
        return {name: "" for name in files}
    try:
        pairs = json.loads(listing.read_text(encoding="utf-8"), object_pairs_hook=list)
    except json.JSONDecodeError as exc:
        raise TraitSetError(f"{listing}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
        raise TraitSetError(f"{listing}: must be an object mapping trait name -> description")
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise TraitSetError(f"{listing}: trait {key!r} is listed twice; keep one entry per trait")
        if not isinstance(value, str):
            raise TraitSetError(f"{listing}: field {key!r} must be a string (the trait's one-line description)")
        out[key] = value
    missing = sorted(set(out) - set(files))
    if missing:
        raise TraitSetError(f"{listing}: lists traits with no file in {inst}: {', '.join(missing[:10])}")
    return out


def load_traits(
    traits_dir: str | os.PathLike[str], wanted: str | list[str] = "all", *, n_pairs: int | None = None,
    n_questions: int | None = None,
) -> dict[str, Trait]:
    """The selected traits (``"all"`` = every listed trait, in list order), each checked to hold
    ``n_pairs`` instruction pairs and ``n_questions`` questions when those are given."""
    traits_dir = Path(traits_dir)
    listed = read_trait_list(traits_dir)
    if wanted == "all":
        names = list(listed)
    else:
        twice = sorted({n for n in wanted if list(wanted).count(n) > 1})
        if twice:
            raise TraitSetError(f"config key 'trait_vectors.traits': {', '.join(twice)} listed more than once; name each trait once")
        unknown = [n for n in wanted if n not in listed]
        if unknown:
            raise TraitSetError(f"{traits_dir}: no trait named {', '.join(unknown[:10])} (config key 'trait_vectors.traits')")
        names = list(wanted)
    inst = _instructions_dir(traits_dir)
    traits = {}
    for name in names:
        trait = load_trait(inst / f"{name}.json", listed[name])
        if n_pairs is not None and len(trait.pairs) < n_pairs:
            raise TraitSetError(
                f"{inst / (name + '.json')}: field 'instruction' has {len(trait.pairs)} pairs but config key "
                f"'trait_vectors.pairs_per_trait' asks for {n_pairs}; add pairs or lower it"
            )
        if n_questions is not None and len(trait.questions) < n_questions:
            raise TraitSetError(
                f"{inst / (name + '.json')}: field 'questions' has {len(trait.questions)} questions but config key "
                f"'trait_vectors.questions_per_trait' asks for {n_questions}; add questions or lower it"
            )
        traits[name] = trait
    if not traits:
        raise TraitSetError(f"{traits_dir}: no traits selected (config key 'trait_vectors.traits')")
    return traits
