"""Agreement of a judge with the hand-labelled validation set (``resources/judge_validation``).

Why this exists: only score-3 responses feed a role vector, so which judge the pipeline uses by
default must rest on a measured agreement with human labels, not on how plausible its rules look.
This module holds what the benchmark (``benchmarks/judge_agreement.py``) and the tests share:
loading the labels, turning them into judge items, and the agreement statistics (accuracy and
Cohen's kappa, unweighted and quadratic-weighted), written with numpy so the numbers can be
checked by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..roles import Role
from .base import JudgeItem

N_CLASSES = 4  # scores 0..3
LABEL_FIELDS = ("key", "role", "system_prompt", "question", "response", "label", "judge_prompt_role", "shows_character")


@dataclass(frozen=True)
class LabelledResponse:
    """One hand-labelled response; ``judge_prompt_role`` names the rubric the label was given under.

    ``label`` follows the rubric as written (a reply that never calls itself an AI is 3);
    ``shows_character`` records whether the labeller saw any trace of the requested character,
    which :func:`character_required_label` uses for the stricter reading.
    """

    key: str
    role: str
    system_prompt: str
    question: str
    response: str
    label: int
    judge_prompt_role: str
    shows_character: bool
    note: str = ""


def load_labels(path: str | os.PathLike[str]) -> list[LabelledResponse]:
    """Read ``labels.jsonl``; a malformed line raises ``ValueError`` naming the line and field."""
    rows: list[LabelledResponse] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        for name in LABEL_FIELDS:
            if name not in obj:
                raise ValueError(f"{path}:{lineno}: field {name!r} is missing")
        if not isinstance(obj["label"], int) or not 0 <= obj["label"] < N_CLASSES:
            raise ValueError(f"{path}:{lineno}: field 'label' must be an integer 0-3, got {obj['label']!r}")
        if not isinstance(obj["shows_character"], bool):
            raise ValueError(f"{path}:{lineno}: field 'shows_character' must be true or false")
        rows.append(LabelledResponse(**{k: obj[k] for k in LABEL_FIELDS}, note=obj.get("note") or ""))
    return rows


def character_required_label(row: LabelledResponse) -> int:
    """The label under the stricter reading of the rubric: 3 also needs a visible trace of the character.

    Why: the rubric's 3 ("does not call itself an AI") also covers plain answers with nothing of
    the character, which are most replies of a small model; only score-3 replies feed a role
    vector, so the stricter reading (such a reply is 1: no trace of the character, answers) is the
    one that matters for the axis. Both readings are reported; see the set's README.
    """
    return 1 if row.label == 3 and not row.shows_character else row.label


def judge_items(rows: Sequence[LabelledResponse], roles: dict[str, Role]) -> list[JudgeItem]:
    """One judge item per row: the rubric of ``judge_prompt_role`` filled with the question and response."""
    return [JudgeItem(r.key, roles[r.judge_prompt_role].judge_prompt(r.question, r.response)) for r in rows]


def confusion_matrix(truth: Sequence[int], pred: Sequence[int], n: int = N_CLASSES) -> np.ndarray:
    """``m[i, j]`` = number of items labelled ``i`` that the judge scored ``j``."""
    m = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        m[t, p] += 1
    return m


def accuracy(truth: Sequence[int], pred: Sequence[int]) -> float:
    """Share of items where the judge's score equals the label (nan for no items)."""
    if not truth:
        return float("nan")
    return float(np.mean(np.asarray(truth) == np.asarray(pred)))


def cohen_kappa(truth: Sequence[int], pred: Sequence[int], weights: str | None = None, n: int = N_CLASSES) -> float:
    """Cohen's kappa: agreement corrected for the agreement expected from the two marginals alone.

    ``weights=None`` counts every disagreement the same; ``"quadratic"`` charges ``(i - j)^2``, so
    scoring 2 for a 3 costs less than scoring 0. Returns nan when chance agreement is perfect (both
    raters use one and the same class), where kappa is undefined.
    """
    m = confusion_matrix(truth, pred, n).astype(float)
    total = m.sum()
    if total == 0:
        return float("nan")
    i, j = np.indices((n, n))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "quadratic":
        w = (i - j) ** 2 / (n - 1) ** 2
    else:
        raise ValueError(f"weights must be None or 'quadratic', got {weights!r}")
    expected = np.outer(m.sum(axis=1), m.sum(axis=0)) / total
    denom = float((w * expected).sum())
    if denom == 0:
        return float("nan")
    return 1.0 - float((w * m).sum()) / denom


@dataclass(frozen=True)
class Agreement:
    """A judge's agreement with the labels; items the judge left missing are excluded and counted."""

    n: int
    missing: int
    accuracy: float
    kappa: float
    kappa_quadratic: float
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, object]:
        return {
            "n": self.n, "missing": self.missing, "accuracy": round(self.accuracy, 4),
            "kappa": round(self.kappa, 4), "kappa_quadratic": round(self.kappa_quadratic, 4),
            "confusion": self.confusion,
        }


def agreement(labels: Sequence[int], scores: Sequence[int | None]) -> Agreement:
    """Agreement of ``scores`` (None = missing) with ``labels``, over the items the judge scored."""
    pairs = [(t, p) for t, p in zip(labels, scores, strict=True) if p is not None]
    truth, pred = [t for t, _ in pairs], [p for _, p in pairs]
    return Agreement(
        n=len(labels),
        missing=len(labels) - len(pairs),
        accuracy=accuracy(truth, pred),
        kappa=cohen_kappa(truth, pred),
        kappa_quadratic=cohen_kappa(truth, pred, "quadratic"),
        confusion=confusion_matrix(truth, pred).tolist(),
    )


def shortfalls(got: Agreement, stated: Mapping[str, float], tolerance: float = 0.01) -> list[str]:
    """Why ``got`` falls short of ``stated`` (its ``accuracy`` and ``kappa``), empty when it does not.

    Why kappa as well as accuracy: 222 of the 224 rubric labels are 3, so a judge that always
    answers 3 is 99% accurate; only kappa (0 for any constant judge) tells it from a real one.
    Any missing verdict is a shortfall too: a judge that skips the hard items must not look good.
    """
    problems = []
    if got.missing:
        problems.append(f"{got.missing} of {got.n} items missing")
    for name in ("accuracy", "kappa"):
        value = getattr(got, name)
        if not value >= stated[name] - tolerance:  # nan fails too
            problems.append(f"{name} {value:.4f} < stated {stated[name]:.4f} - {tolerance}")
    return problems
