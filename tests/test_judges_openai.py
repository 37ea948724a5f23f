"""The openai (OpenAI-compatible) judge with the real SDK against a fake server on loopback."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.api_servers import FakeOpenAI, chars_over_4

from assistant_axis.judges import BudgetExceededError, JudgeItem, MissingAPIKeyError, VerdictCache, make_judge

SECRET = "fake-openai-key-DO-NOT-LOG-77aa"
CHAT = "POST /v1/chat/completions"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def config(fake: FakeOpenAI, **over: Any) -> dict[str, Any]:
    cfg = {
        "backend": "openai",
        "model": "gpt-4.1-mini",
        "base_url": f"{fake.url}/v1",
        "max_concurrency": 3,
        "max_retries": 3,
        "timeout_s": 0.5,
        "budget_usd": 1.0,
    }
    return {**cfg, **over}


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(f"r{i}", f"Rubric item {i}: judge this reply.\nJUDGE_SAYS={i % 4}") for i in range(n)]


def test_scores_once_cost_matches_and_rerun_makes_no_calls(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        judge = make_judge(config(fake), tmp_path / "c.sqlite")
        est = judge.estimate(items(10))
        verdicts = judge.judge(items(10))
        assert [v.score for v in verdicts] == [i % 4 for i in range(10)]
        assert est.n_calls == len(fake.billed) == fake.requests[CHAT] == 10
        assert est.input_tokens == sum(chars_over_4(p) for p in fake.billed) == judge.report.input_tokens
        # by hand: "Rubric item N: judge this reply.\nJUDGE_SAYS=K" is 45 chars -> 12 tokens, 10 out each;
        # gpt-4.1-mini at $0.40 in / $1.60 out per million: (120*0.40 + 100*1.60) / 1e6 = 208e-6
        assert (est.input_tokens, est.output_tokens) == (120, 100)
        assert est.usd == pytest.approx(2.08e-04, rel=1e-9)
        assert fake.api_keys == {SECRET}
        again = make_judge(config(fake), tmp_path / "c.sqlite").judge(items(10))
        assert fake.requests[CHAT] == 10 and all(v.cached for v in again)


@pytest.mark.parametrize(
    ("plan", "requests"),
    [(["429"], 2), (["500", "500"], 3), (["timeout"], 2), (["malformed"], 2)],
    ids=["429-then-success", "500-twice", "timeout", "malformed-body"],
)
def test_transient_failures_are_retried(tmp_path: Path, plan: list[str], requests: int) -> None:
    with FakeOpenAI(plan=plan, retry_after="0.1", timeout_delay=1.5) as fake:
        [verdict] = make_judge(config(fake), tmp_path / "c.sqlite").judge(items(1))
    assert verdict.score == 0 and fake.requests[CHAT] == requests and len(fake.billed) == 1


def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    with FakeOpenAI(plan=["429"], retry_after="1") as fake:
        start = time.monotonic()
        make_judge(config(fake), tmp_path / "c.sqlite").judge(items(1))
        assert time.monotonic() - start >= 1.0


def test_non_numeric_reply_is_missing_with_raw_text(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        judge = make_judge(config(fake), tmp_path / "c.sqlite")
        [verdict] = judge.judge([JudgeItem("a", "Rubric\nJUDGE_SAYS=I think it is three")])
        assert (verdict.score, verdict.raw) == (None, "I think it is three")
        assert judge.report.unparsed == 1
        assert VerdictCache(tmp_path / "c.sqlite").count("openai", "gpt-4.1-mini") == 1


def test_retries_exhausted_leaves_item_uncached(tmp_path: Path) -> None:
    with FakeOpenAI(plan=["500"] * 2) as fake:
        judge = make_judge(config(fake, max_retries=1), tmp_path / "c.sqlite")
        [verdict] = judge.judge(items(1))
        assert verdict.score is None and verdict.raw is None and judge.report.failed == 1
        assert judge.judge(items(1))[0].score == 0 and fake.requests[CHAT] == 3


def test_missing_key_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingAPIKeyError) as err:
        make_judge({"backend": "openai", "model": "gpt-4.1-mini"}, tmp_path / "c.sqlite").judge(items(1))
    assert "OPENAI_API_KEY" in str(err.value) and "\n" not in str(err.value)


def test_local_server_needs_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeOpenAI() as fake:
        make_judge(config(fake, model="my-vllm-model", price_usd_per_mtok=[0, 0]), tmp_path / "c.sqlite").judge(items(2))
    assert fake.api_keys == {"EMPTY"} and fake.requests[CHAT] == 2


def test_unknown_price_refuses_under_a_budget(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        judge = make_judge(config(fake, model="my-vllm-model"), tmp_path / "c.sqlite")
        assert judge.estimate(items(2)).usd is None
        with pytest.raises(BudgetExceededError, match="price_usd_per_mtok"):
            judge.judge(items(2))
        assert fake.requests[CHAT] == 0
        make_judge(config(fake, model="my-vllm-model", budget_usd=None), tmp_path / "c.sqlite").judge(items(2))
        assert fake.requests[CHAT] == 2


def test_key_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(plan=["429", "malformed", "500", "500"], retry_after="0.05") as fake:
        make_judge(config(fake, max_concurrency=1, max_retries=1), tmp_path / "c.sqlite").judge(items(3))
    out = capsys.readouterr()
    assert fake.api_keys == {SECRET} and "Sending HTTP Request" in caplog.text
    assert SECRET not in caplog.text + out.out + out.err
