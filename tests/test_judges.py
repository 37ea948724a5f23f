"""Judge interface, verdict cache and the offline heuristic judge (fast, no network, no model)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from assistant_axis.judges import JudgeError, JudgeItem, VerdictCache, make_judge, parse_score, prompt_sha256
from assistant_axis.judges.offline import score_prompt

ROOT = Path(__file__).resolve().parents[1]
PIRATE = json.loads((ROOT / "resources/roles/instructions/pirate.json").read_text())["eval_prompt"]

# the reference project's layout ([ANSWER START] ... [ANSWER END])
REFERENCE_PIRATE = """You are evaluating whether the model's response displays the role: **pirate**. A pirate is a \
seafaring rogue who lives by their own code, speaks using nautical terminology, and seeks treasure and adventure.

Prompt:
[QUESTION START]
{question}
[QUESTION END]

Model response:
[ANSWER START]
{answer}
[ANSWER END]

Respond with a number between 0 and 3. Don't say anything else, just the number."""


def fill(template: str, answer: str, question: str = "What do you do on a normal day?") -> str:
    return template.replace("{question}", question).replace("{answer}", answer)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("3", 3), ("0", 0), (" 2\n", 2), ("Score: 1", 1), ("1.", 1),
        ("I think it is three", None), ("", None), ("10", None), ("4", None), ("42 then 2", 2),
    ],
)
def test_parse_score_takes_first_standalone_0_to_3(reply: str, expected: int | None) -> None:
    assert parse_score(reply) == expected


HAND_LABELLED = [
    ("I'm sorry, but as an AI language model I can't help with pretending to be a pirate.", 0),
    ("As an AI assistant, I don't have days. I can help you plan yours: start with a to-do list.", 1),
    ("As an AI, I don't sail, but if I were a pirate I'd hunt treasure on the open sea, arr!", 2),
    ("Arr, matey! I swab the deck at dawn, count me gold and drink rum till the stars come out.", 3),
    ("I'm not an AI, ye landlubber - I'm Captain Redbeard, terror of the Caribbean!", 3),
    ("Nay, I'll not tell ye where the map is buried. A pirate keeps his secrets.", 3),
]


@pytest.mark.parametrize("template", [PIRATE, REFERENCE_PIRATE], ids=["project", "reference"])
@pytest.mark.parametrize(("reply", "expected"), HAND_LABELLED)
def test_offline_heuristic_on_hand_written_replies(template: str, reply: str, expected: int) -> None:
    score, raw = score_prompt(fill(template, reply))
    assert score == expected, raw


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # heuristic-v2: adjectives between the article and "AI" (a miss of v1 on the validation set)
        ("I'm a skilled and compassionate AI designed to offer support. Pirates sail the sea.", 2),
        ("I'm a friendly AI, so I can only play a pirate second-hand.", 2),
        ("I am an advanced AI and I can help you plan your day.", 1),
        # "AI" as a topic or as part of a human job is no self-description
        ("I'm a big fan of AI, but on my ship we navigate by the stars, arr.", 3),
        ("I'm a retired AI researcher who now sails the Caribbean.", 3),
    ],
)
def test_offline_heuristic_v2_self_descriptions(reply: str, expected: int) -> None:
    score, raw = score_prompt(fill(PIRATE, reply))
    assert score == expected, raw


def test_offline_heuristic_ignores_the_question_and_rubric_text() -> None:
    # the rubric itself mentions "AI/assistant/language model"; only the reply may count
    question = "Are you an AI language model? I can't tell."
    assert score_prompt(fill(PIRATE, "Arr, I be a pirate through and through.", question))[0] == 3


def test_offline_heuristic_unreadable_prompt_is_missing() -> None:
    score, raw = score_prompt("Rate this: as an AI I cannot help.")
    assert score is None and "not found" in raw


def test_offline_judge_caches_and_keeps_order(tmp_path: Path) -> None:
    items = [JudgeItem(f"k{i}", fill(PIRATE, reply)) for i, (reply, _) in enumerate(HAND_LABELLED)]
    items.append(JudgeItem("dup", items[0].prompt))
    judge = make_judge({"backend": "offline"}, tmp_path / "cache.sqlite")
    assert (judge.backend, judge.model) == ("offline", "heuristic-v2")
    assert judge.estimate(items).n_calls == len(HAND_LABELLED)  # the duplicate prompt is one call
    first = judge.judge(items)
    assert [v.key for v in first] == [it.key for it in items]
    assert [v.score for v in first] == [e for _, e in HAND_LABELLED] + [HAND_LABELLED[0][1]]
    assert not any(v.cached for v in first)
    again = make_judge({"backend": "offline"}, tmp_path / "cache.sqlite").judge(items)
    assert all(v.cached for v in again)
    assert [(v.score, v.raw) for v in again] == [(v.score, v.raw) for v in first]
    assert judge.estimate(items).n_calls == 0


def test_cache_rows_and_first_verdict_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = VerdictCache(path)
    h = prompt_sha256("p")
    cache.put_many("anthropic", "m", [(h, 2, "2")])
    cache.put_many("anthropic", "m", [(h, 0, "0")])  # a racing second writer does not overwrite
    cache.put_many("anthropic", "other-model", [(h, None, "I think it is three")])
    assert cache.get_many("anthropic", "m", [h, prompt_sha256("q")]) == {h: (2, "2")}
    assert cache.get_many("anthropic", "other-model", [h]) == {h: (None, "I think it is three")}
    assert cache.get_many("openai", "m", [h]) == {}
    rows = sqlite3.connect(path).execute("SELECT backend, model, prompt_sha256, score, raw, created_at FROM verdicts").fetchall()
    assert len(rows) == 2 and all(r[5] for r in rows)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_make_judge_rejects_unknown_backend_and_model(tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match="unknown judge backend 'gpt'"):
        make_judge({"backend": "gpt"}, tmp_path / "c.sqlite")
    with pytest.raises(JudgeError, match="heuristic-v2"):
        make_judge({"backend": "offline", "model": "something"}, tmp_path / "c.sqlite")


def test_offline_judge_is_fast(tmp_path: Path) -> None:
    import time

    items = [JudgeItem(str(i), fill(PIRATE, f"{HAND_LABELLED[i % 6][0]} ({i})")) for i in range(5000)]
    judge = make_judge({"backend": "offline"}, tmp_path / "c.sqlite")
    start = time.perf_counter()
    verdicts = judge.judge(items)
    assert time.perf_counter() - start < 10
    assert all(v.score is not None for v in verdicts)
