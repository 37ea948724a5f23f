"""The hand-labelled judge validation set and the agreement statistics computed on it.

Why: the README quotes the offline heuristic's agreement with these labels and the default judge
was chosen by it; these tests keep the set well-formed, the statistics right on cases small
enough to work out by hand, and the heuristic from silently falling below the quoted numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from assistant_axis.judges import make_judge
from assistant_axis.judges.offline import MODEL as HEURISTIC
from assistant_axis.judges.validation import (
    accuracy,
    agreement,
    character_required_label,
    cohen_kappa,
    confusion_matrix,
    judge_items,
    load_labels,
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
        got = agreement(truth, scores)
        assert got.missing == 0
        assert got.accuracy >= stated[reading]["accuracy"] - 0.01
        assert got.kappa >= stated[reading]["kappa"] - 0.01
