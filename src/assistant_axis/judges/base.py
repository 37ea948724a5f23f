"""The judge interface shared by every backend: items in, verdicts out, the cache in between.

Every backend answers the same question (a 0-3 role-play score for one filled-in rubric prompt),
so the caching, de-duplication, cost estimate, budget check and reporting live here once and a
backend only implements :meth:`Judge._run` (score the prompts that are not cached yet, storing each
verdict the moment it is known so a crash loses at most the calls in flight).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .cache import VerdictCache

log = logging.getLogger("assistant_axis.judges")

_SCORE_RE = re.compile(r"(?<!\d)[0-3](?!\d)")
_TRAIT_SCORE_RE = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?(?![\d.]*\d)")
_REFUSAL_REPLY_RE = re.compile(r"^\W*refusal\b", re.I)

# The two scales a judge can be asked for: role play and harm rubrics answer 0-3 (the default);
# trait eval prompts answer REFUSAL or 0-100 (how strongly the reply shows the trait).
ROLE_SCALE = "0-3"
TRAIT_SCALE = "0-100"
SCALES = (ROLE_SCALE, TRAIT_SCALE)


class JudgeError(RuntimeError):
    """A judge cannot run as configured (bad backend, missing key, unknown price...)."""


class MissingAPIKeyError(JudgeError):
    """The environment variable holding an API key is not set."""


class BudgetExceededError(JudgeError):
    """The estimated cost of the pending calls is above ``budget_usd``."""


@dataclass(frozen=True)
class JudgeItem:
    """One response to judge: ``key`` is the caller's id, ``prompt`` the filled-in rubric."""

    key: str
    prompt: str


@dataclass(frozen=True)
class Verdict:
    """The judge's answer for one item.

    ``score`` None means missing: the reply did not parse to 0-3 (``raw`` holds it) or the call
    failed (``raw`` None; nothing was cached, so a rerun asks again). ``cached`` is True when the
    verdict came from the cache rather than from a call made by this ``judge()``.
    """

    key: str
    score: int | None
    raw: str | None
    cached: bool


@dataclass(frozen=True)
class CostEstimate:
    """What the pending calls will cost. Token counts are estimates (chars/4 in, max_tokens out)."""

    n_calls: int
    input_tokens: int
    output_tokens: int
    usd: float | None  # None when no price is known for the model
    batch: bool = False

    def describe(self) -> str:
        usd = "unknown (no price for this model)" if self.usd is None else f"${self.usd:.4f}"
        mode = " (batch price)" if self.batch else ""
        return f"{self.n_calls} calls, ~{self.input_tokens} input tokens, estimated {usd}{mode}"


@dataclass
class JudgeReport:
    """Counts from the last ``judge()`` call, logged at its end so losses are never silent."""

    items: int = 0
    cached: int = 0
    called: int = 0
    scored: int = 0
    unparsed: int = 0
    failed: int = 0
    input_tokens: int = 0  # as reported by the API (0 for local backends)
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def parse_score(reply: str) -> int | None:
    """The first standalone integer 0-3 in ``reply``, else None (never a guess: missing stays missing)."""
    m = _SCORE_RE.search(reply)
    return int(m.group()) if m else None


def parse_trait_score(reply: str) -> int | None:
    """A trait judge's reply -> 0-100, or None (missing) for ``REFUSAL`` and anything unparsable.

    The first number in the reply counts (a decimal is rounded); one above 100 is unparsable, not
    clipped. A reply that starts with REFUSAL is missing even if a number follows.
    """
    if is_refusal(reply):
        return None
    m = _TRAIT_SCORE_RE.search(reply)
    if not m:
        return None
    value = round(float(m.group(0)))
    return value if 0 <= value <= 100 else None


def is_refusal(raw: str | None) -> bool:
    """True when a trait verdict's raw reply says REFUSAL (the judge found the model refused to answer)."""
    return bool(raw) and bool(_REFUSAL_REPLY_RE.match(raw))


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def estimate_tokens(text: str) -> int:
    """Rough input token count (chars/4, rounded up); good enough for a budget guard, not a bill."""
    return -(-len(text) // 4)


class Judge:
    """Scores :class:`JudgeItem` s through the cache; subclasses implement :meth:`_run`."""

    backend: str = ""
    paid: bool = False  # paid backends print the estimate and enforce the budget
    scale: str = ROLE_SCALE  # set by make_judge; decides how a reply is parsed (see parse)

    def __init__(self, model: str, cache: VerdictCache, budget_usd: float | None = None, allow_over_budget: bool = False):
        self.model = model
        self.cache = cache
        self.budget_usd = budget_usd
        self.allow_over_budget = allow_over_budget
        self.report = JudgeReport()

    # -- public API ----------------------------------------------------------------------------

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Verdicts for ``items`` in order; only prompts not in the cache are sent, each once."""
        self.report = JudgeReport(items=len(items))
        self._resume()
        hashes = [prompt_sha256(it.prompt) for it in items]
        cached = self.cache.get_many(self.backend, self.model, hashes)
        todo = {h: it.prompt for h, it in zip(hashes, items, strict=True) if h not in cached}
        fresh: dict[str, tuple[int | None, str]] = {}
        if todo:
            self._check_budget(self._estimate(todo))
            fresh = self._run(todo)
        verdicts = []
        for it, h in zip(items, hashes, strict=True):
            if h in cached:
                score, raw = cached[h]
                verdicts.append(Verdict(it.key, score, raw, cached=True))
                self.report.cached += 1
            elif h in fresh:
                score, raw = fresh[h]
                verdicts.append(Verdict(it.key, score, raw, cached=False))
            else:
                verdicts.append(Verdict(it.key, None, None, cached=False))
        missing = sum(v.score is None for v in verdicts)
        log.info(
            "judge %s/%s: %d items, %d cached, %d calls, %d scored, %d unparsed replies, %d failed calls, "
            "%d missing in all%s",
            self.backend, self.model, len(items), self.report.cached, self.report.called, self.report.scored,
            self.report.unparsed, self.report.failed, missing,
            f"; errors: {self.report.errors}" if self.report.errors else "",
        )
        return verdicts

    def estimate(self, items: Sequence[JudgeItem]) -> CostEstimate:
        """Cost of judging ``items`` now: uncached, distinct prompts only."""
        hashes = [prompt_sha256(it.prompt) for it in items]
        cached = self.cache.get_many(self.backend, self.model, hashes)
        return self._estimate({h: it.prompt for h, it in zip(hashes, items, strict=True) if h not in cached})

    def parse(self, reply: str) -> int | None:
        """A judge model's reply as a score on this judge's scale (:func:`parse_score` or :func:`parse_trait_score`)."""
        return parse_trait_score(reply) if self.scale == TRAIT_SCALE else parse_score(reply)

    # -- for subclasses ------------------------------------------------------------------------

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        """Score ``{prompt_sha256: prompt}``; call :meth:`_store` for each verdict as it arrives."""
        raise NotImplementedError

    def _resume(self) -> None:
        """Finish work a crashed earlier run left behind (batch backends); nothing by default."""

    def _estimate(self, todo: Mapping[str, str]) -> CostEstimate:
        return CostEstimate(len(todo), sum(estimate_tokens(p) for p in todo.values()), 0, 0.0)

    def _store(self, rows: Sequence[tuple[str, int | None, str]]) -> None:
        """Cache ``(prompt_sha256, score, raw)`` rows in one commit and count them."""
        self.cache.put_many(self.backend, self.model, rows)
        for _, score, _ in rows:
            if score is None:
                self.report.unparsed += 1
            else:
                self.report.scored += 1

    def _fail(self, kind: str) -> None:
        """Count a call that produced no reply; nothing is cached so a rerun tries again."""
        self.report.failed += 1
        self.report.errors[kind] = self.report.errors.get(kind, 0) + 1

    def _check_budget(self, est: CostEstimate) -> None:
        if not self.paid:
            log.info("judge %s/%s: %d prompts to score", self.backend, self.model, est.n_calls)
            return
        msg = f"judge: {est.describe()} ({self.backend}/{self.model})"
        print(msg, file=sys.stderr, flush=True)
        log.info(msg)
        if self.allow_over_budget or self.budget_usd is None:
            return
        if est.usd is None:
            raise BudgetExceededError(
                f"judge: no price known for model {self.model!r}, so the cost cannot be checked against "
                f"budget_usd={self.budget_usd}; set price_usd_per_mtok: [input, output] or allow_over_budget: true"
            )
        if est.usd > self.budget_usd:
            raise BudgetExceededError(
                f"judge: estimated ${est.usd:.4f} for {est.n_calls} calls exceeds budget_usd=${self.budget_usd}; "
                "raise budget_usd or set allow_over_budget: true to go on"
            )
