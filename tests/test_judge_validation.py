"""The hand-labelled judge validation set and the agreement statistics computed on it.

Why: the README quotes the offline heuristic's agreement with these labels and the default judge
was chosen by it; these tests keep the set well-formed, the statistics right on cases small
enough to work out by hand, and the heuristic from silently falling below the quoted numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from assistant_axis.judges import Judge, VerdictCache, make_judge
from assistant_axis.judges.offline import MODEL as HEURISTIC
from assistant_axis.judges.validation import (
    accuracy,
    agreement,
    character_required_label,
    cohen_kappa,
    confusion_matrix,
    judge_items,
    load_labels,
    shortfalls,
)
from assistant_axis.roles import DEFAULT_ROLE, load_roles

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "resources/judge_validation"


def test_labels_file_is_well_formed() -> None:
    rows = load_labels(SET / "labels.jsonl")
    roles = load_roles(ROOT / "resources/roles")
    assert len(rows) >= 200
    assert len({r.key for r in rows}) == len(rows)
    assert DEFAULT_ROLE in {r.role for r in rows}
    assert len({r.role for r in rows} - {DEFAULT_ROLE}) >= 40
    for r in rows:
        assert 0 <= r.label <= 3
        assert r.judge_prompt_role in roles and r.judge_prompt_role != DEFAULT_ROLE
        assert r.role in (DEFAULT_ROLE, r.judge_prompt_role)
        assert r.response.strip() and r.question.strip()


def test_accuracy_and_confusion_by_hand() -> None:
    truth, pred = [0, 1, 2, 3, 3], [0, 1, 3, 3, 1]
    assert accuracy(truth, pred) == pytest.approx(3 / 5)
    m = confusion_matrix(truth, pred)
    assert m.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]]
    assert math.isnan(accuracy([], []))


def test_cohen_kappa_by_hand() -> None:
    # 10 items, 8 agree; both raters use each class 5 times -> p_e = 0.5, kappa = (0.8 - 0.5) / 0.5
    truth = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    pred = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    assert cohen_kappa(truth, pred, n=2) == pytest.approx(0.6)
    assert cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    # always the same answer: chance agreement equals observed agreement -> kappa 0
    assert cohen_kappa([0, 1, 1, 3], [1, 1, 1, 1]) == pytest.approx(0.0)
    # one class for both raters: undefined
    assert math.isnan(cohen_kappa([3, 3], [3, 3]))


def test_quadratic_kappa_by_hand() -> None:
    # truth [0, 3], pred [1, 3]; weights (i - j)^2 / 9; observed disagreement = (1/9) / 2
    # expected cells (each 1/4): (0,1) w 1/9, (0,3) w 1, (3,1) w 4/9, (3,3) w 0
    expected = (1 / 9 + 1 + 4 / 9) / 4
    assert cohen_kappa([0, 3], [1, 3], "quadratic") == pytest.approx(1 - (1 / 18) / expected)
    # one miss by 1 vs one miss by 3: the same unweighted, the near miss better under quadratic weights
    truth = [0, 1, 2, 3, 3, 2]
    near, far = [0, 1, 2, 3, 2, 2], [0, 1, 2, 3, 0, 2]
    assert cohen_kappa(truth, near, "quadratic") > cohen_kappa(truth, far, "quadratic")
    with pytest.raises(ValueError):
        cohen_kappa([0], [0], "linearish")


def test_agreement_counts_missing_separately() -> None:
    a = agreement([3, 3, 1, 0], [3, None, 1, 3])
    assert (a.n, a.missing) == (4, 1)
    assert a.accuracy == pytest.approx(2 / 3)
    assert sum(map(sum, a.confusion)) == 3


def test_heuristic_agreement_matches_what_the_readme_states(tmp_path: Path) -> None:
    stated = json.loads((SET / "agreement.json").read_text())["judges"][f"offline/{HEURISTIC}"]
    rows = load_labels(SET / "labels.jsonl")
    roles = load_roles(ROOT / "resources/roles", sorted({r.judge_prompt_role for r in rows}))
    verdicts = make_judge({"backend": "offline"}, tmp_path / "cache.sqlite").judge(judge_items(rows, roles))
    scores = [v.score for v in verdicts]
    for reading, truth in (
        ("rubric", [r.label for r in rows]),
        ("character_required", [character_required_label(r) for r in rows]),
    ):
        assert shortfalls(agreement(truth, scores), stated[reading]) == []


class ScriptedJudge(Judge):
    """A judge whose answer to each prompt is fixed in advance: the validation's known-wrong judges."""

    backend = "scripted"

    def __init__(self, cache: VerdictCache, answers: Mapping[str, int | None]):
        super().__init__("scripted", cache)
        self.answers = answers

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        rows = [(h, self.answers[p], f"answer {self.answers[p]}") for h, p in todo.items()]
        self._store(rows)
        return {h: (score, raw) for h, score, raw in rows}


def _run_scripted(rule: Callable[[int, int], int | None], tmp_path: Path) -> list[str]:
    """Judge the set with ``rule(row index, label) -> answer`` and check it against the heuristic's stated rubric agreement."""
    rows = load_labels(SET / "labels.jsonl")
    roles = load_roles(ROOT / "resources/roles", sorted({r.judge_prompt_role for r in rows}))
    items = judge_items(rows, roles)
    answers = {it.prompt: rule(i, r.label) for i, (it, r) in enumerate(zip(items, rows, strict=True))}
    verdicts = ScriptedJudge(VerdictCache(tmp_path / "c.sqlite"), answers).judge(items)
    stated = json.loads((SET / "agreement.json").read_text())["judges"][f"offline/{HEURISTIC}"]["rubric"]
    return shortfalls(agreement([r.label for r in rows], [v.score for v in verdicts]), stated)


def test_a_judge_that_agrees_with_every_label_passes(tmp_path: Path) -> None:
    assert _run_scripted(lambda i, label: label, tmp_path) == []


@pytest.mark.parametrize(
    ("rule", "caught_by"),
    [
        # 222/224 labels are 3: always-3 is 99.1% accurate, and only kappa (exactly 0) catches it
        (lambda i, label: 3, ["kappa 0.0000"]),
        # the two 1s scored 0: still 99.1% accurate; kappa = (222*224 - 222^2) / (224^2 - 222^2) = 222/446
        (lambda i, label: 0 if label == 1 else label, ["kappa 0.4978"]),
        # the scale read backwards (3 -> 0, 1 -> 2): no class in common, so p_o = p_e = 0 and kappa 0
        (lambda i, label: 3 - label, ["accuracy 0.0000", "kappa 0.0000"]),
        # right whenever it answers, silent on a few: missing items are never excused
        (lambda i, label: None if i % 50 == 0 else label, ["5 of 224 items missing"]),
    ],
    ids=["always-3", "ones-as-zeros", "inverted", "skips-some"],
)
def test_judges_wrong_in_known_ways_are_caught(rule: Callable[[int, int], int | None], caught_by: list[str], tmp_path: Path) -> None:
    problems = _run_scripted(rule, tmp_path)
    assert len(problems) == len(caught_by)
    for problem, start in zip(problems, caught_by, strict=True):
        assert problem.startswith(start), problems
