"""The offline judge's trait rules (model ``trait-heuristic-v1``): a word-overlap 0-100 score.

Why it exists: the default pipeline runs with no network and no judge model, yet the
``trait_vectors`` stage needs a trait-expression score for every reply. It is a deterministic
heuristic, not a reader: use an API judge (``trait_vectors.judge``) for numbers worth quoting.

It reads the filled-in trait eval prompt (this project's ``resources/traits`` prompts and the
reference's share the layout): the trait's name and description after ``trait: **name**``, the
question between ``[QUESTION START]``/``[QUESTION END]`` and the reply between
``[ANSWER START]``/``[ANSWER END]``. Then:

* a reply that refuses ("I can't help with...", see :data:`.text_rules.REFUSAL_RE`) is
  ``REFUSAL`` (score missing, like an API judge's REFUSAL);
* the *trait words* are the content-word stems (5+ letters, compared on their first 5 letters) of
  the trait's name and description, minus those of the question, so echoing the question earns
  nothing;
* the score is ``100 x min(hits, 3) / 3`` rounded, with ``hits`` the distinct trait words in the
  reply: 0, 33, 67 or 100. An empty reply scores 0.

Limits, stated so nobody mistakes it for a judge: it sees words, not meaning. "I will not be
mystical about destiny" counts as mystical; a trait shown through style rather than vocabulary
(concise, formal, chaotic) is mostly missed; generic words of a description ("person",
"answer") give stray hits; and it knows nothing of the instruction the reply was written under.
Its agreement with an LLM judge has not been measured.
"""

from __future__ import annotations

import json
import re

from .text_rules import REFUSAL_RE, WORD_RE, content_stems

MODEL = "trait-heuristic-v1"
HITS_FOR_FULL = 3

_TRAIT_RE = re.compile(r"trait:?\s*\*\*(.+?)\*\*[.:]?[ \t]*([^\n]*)", re.I)
_QUESTION_RE = re.compile(r"\[QUESTION START\]\n?(.*?)\n?\[QUESTION END\]", re.S)
_ANSWER_RE = re.compile(r"\[ANSWER START\]\n?(.*)\n?\[ANSWER END\]", re.S)


def is_trait_prompt(prompt: str) -> bool:
    """True when ``prompt`` reads like a filled-in trait eval prompt (``trait: **name**`` and the answer markers)."""
    return bool(_TRAIT_RE.search(prompt) and _ANSWER_RE.search(prompt))


def score_trait_prompt(prompt: str) -> tuple[int | None, str]:
    """``(score 0-100 or None, raw)``; raw starts with ``REFUSAL`` for a refusal, then the features as JSON."""
    trait = _TRAIT_RE.search(prompt)
    answer = _ANSWER_RE.search(prompt)
    if trait is None or answer is None:
        return None, json.dumps({"error": "trait name or answer markers not found in the trait prompt"})
    question = _QUESTION_RE.search(prompt)
    name = " ".join(WORD_RE.findall(trait.group(1).lower().replace("_", " ")))
    words = content_stems(f"{name} {trait.group(2)}") - content_stems(question.group(1) if question else "")
    reply = answer.group(1).strip()
    hits = sorted(words & content_stems(reply))
    refusal = bool(REFUSAL_RE.search(reply))
    features = {"refusal": refusal, "trait_words": hits, "empty": not reply}
    if refusal:
        return None, "REFUSAL " + json.dumps(features, sort_keys=True)
    score = round(100 * min(len(hits), HITS_FOR_FULL) / HITS_FOR_FULL)
    return score, json.dumps(features, sort_keys=True)
