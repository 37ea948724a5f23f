"""The anthropic judge with the real SDK against a fake Anthropic API on loopback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.api_servers import FakeAnthropic, chars_over_4

from assistant_axis.judges import BudgetExceededError, JudgeItem, MissingAPIKeyError, VerdictCache, make_judge
from assistant_axis.judges.api import PRICES_USD_PER_MTOK

SECRET = "fake-anthropic-key-DO-NOT-LOG-5f1e2d"
MESSAGES = "POST /v1/messages"
CREATE = "POST /v1/messages/batches"
RETRIEVE = "GET /v1/messages/batches/{id}"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)


@pytest.fixture
def fake() -> Any:
    with FakeAnthropic() as server:
        yield server


def config(fake: FakeAnthropic, **over: Any) -> dict[str, Any]:
    cfg = {
        "backend": "anthropic",
        "base_url": fake.url,
        "max_concurrency": 4,
        "max_retries": 3,
        "timeout_s": 0.5,
        "poll_interval_s": 0.02,
        "budget_usd": 1.0,
    }
    return {**cfg, **over}


def items(n: int, tag: str = "") -> list[JudgeItem]:
    return [JudgeItem(f"r{i}", f"Rubric {tag} item {i}: judge this reply.\nJUDGE_SAYS={i % 4}") for i in range(n)]


def test_default_model_is_known_to_the_sdk(tmp_path: Path) -> None:
    from typing import get_args

    from anthropic.types import Model

    judge = make_judge({"backend": "anthropic"}, tmp_path / "c.sqlite")
    assert judge.model in get_args(get_args(Model)[0])
    assert judge.model in PRICES_USD_PER_MTOK


def test_scores_each_item_once_and_rerun_makes_no_calls(fake: FakeAnthropic, tmp_path: Path) -> None:
    batch = items(12) + [JudgeItem("dup", items(12)[5].prompt)]
    judge = make_judge(config(fake), tmp_path / "c.sqlite")
    verdicts = judge.judge(batch)
    assert [v.score for v in verdicts] == [i % 4 for i in range(12)] + [1]
    assert [v.key for v in verdicts] == [it.key for it in batch]
    assert fake.requests[MESSAGES] == 12 and len(fake.billed) == 12
    assert fake.api_keys == {SECRET}
    assert fake.last_request["thinking"] == {"type": "disabled"} and fake.last_request["max_tokens"] == 10

    again = make_judge(config(fake), tmp_path / "c.sqlite").judge(batch)
    assert fake.requests[MESSAGES] == 12  # nothing re-paid
    assert all(v.cached for v in again) and [v.score for v in again] == [v.score for v in verdicts]


def test_cost_estimate_matches_the_calls_made(fake: FakeAnthropic, tmp_path: Path) -> None:
    batch = items(9)
    judge = make_judge(config(fake, max_tokens=10), tmp_path / "c.sqlite")
    est = judge.estimate(batch)
    judge.judge(batch)
    assert est.n_calls == len(fake.billed) == fake.requests[MESSAGES] == 9
    assert est.input_tokens == sum(chars_over_4(p) for p in fake.billed) == judge.report.input_tokens
    # by hand: each prompt "Rubric  item N: judge this reply.\nJUDGE_SAYS=K" is 46 chars -> 12 tokens;
    # claude-haiku-5-5 at $0.10 in / $0.50 out per million: (9*12*0.10 + 9*10*0.50) / 1e6 = 55.8e-6
    assert (judge.model, est.input_tokens, est.output_tokens) == ("claude-haiku-5-5", 108, 90)
    assert est.usd == pytest.approx(5.58e-05, rel=1e-9)
    assert judge.estimate(batch).n_calls == 0


def test_estimate_is_printed_before_calls(fake: FakeAnthropic, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_judge(config(fake), tmp_path / "c.sqlite").judge(items(3))
    assert "judge: 3 calls, ~" in capsys.readouterr().err


def test_429_then_success_honours_retry_after(tmp_path: Path) -> None:
    with FakeAnthropic(plan=["429"], retry_after="1") as fake:
        judge = make_judge(config(fake, max_concurrency=1), tmp_path / "c.sqlite")
        start = time.monotonic()
        [verdict] = judge.judge(items(1))
        assert time.monotonic() - start >= 1.0
    assert verdict.score == 0 and fake.requests[MESSAGES] == 2 and len(fake.billed) == 1


def test_529_and_500_are_retried(tmp_path: Path) -> None:
    with FakeAnthropic(plan=["529", "500"]) as fake:
        verdicts = make_judge(config(fake, max_concurrency=1), tmp_path / "c.sqlite").judge(items(2))
    assert [v.score for v in verdicts] == [0, 1]
    assert fake.failures == {"529": 1, "500": 1} and fake.requests[MESSAGES] == 4 and len(fake.billed) == 2


def test_timeout_is_retried(tmp_path: Path) -> None:
    with FakeAnthropic(plan=["timeout"], timeout_delay=1.5) as fake:
        [verdict] = make_judge(config(fake, timeout_s=0.5), tmp_path / "c.sqlite").judge(items(1))
    assert verdict.score == 0 and fake.requests[MESSAGES] == 2 and len(fake.billed) == 1


def test_malformed_body_is_retried(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.plan.extend(["malformed"])
    [verdict] = make_judge(config(fake), tmp_path / "c.sqlite").judge(items(1))
    assert verdict.score == 0 and fake.requests[MESSAGES] == 2


def test_failed_call_stays_missing_uncached_and_is_retried_next_run(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.plan.extend(["500", "500"])  # max_retries=1: two attempts, both fail
    judge = make_judge(config(fake, max_retries=1), tmp_path / "c.sqlite")
    [verdict] = judge.judge(items(1))
    assert (verdict.score, verdict.raw, verdict.cached) == (None, None, False)
    assert judge.report.failed == 1 and judge.report.errors == {"InternalServerError": 1}
    assert VerdictCache(tmp_path / "c.sqlite").count() == 0
    [verdict] = judge.judge(items(1))
    assert verdict.score == 0 and fake.requests[MESSAGES] == 3


def test_non_numeric_reply_is_cached_as_missing_with_raw_text(fake: FakeAnthropic, tmp_path: Path) -> None:
    batch = [JudgeItem("a", "Rubric A\nJUDGE_SAYS=I think it is three"), JudgeItem("b", "Rubric B\nJUDGE_SAYS=2")]
    judge = make_judge(config(fake), tmp_path / "c.sqlite")
    verdicts = judge.judge(batch)
    assert [(v.score, v.raw) for v in verdicts] == [(None, "I think it is three"), (2, "2")]
    assert judge.report.unparsed == 1 and judge.report.scored == 1
    again = judge.judge(batch)
    assert fake.requests[MESSAGES] == 2 and again[0].cached and again[0].raw == "I think it is three"


def test_budget_refusal_makes_no_call(fake: FakeAnthropic, tmp_path: Path) -> None:
    judge = make_judge(config(fake, budget_usd=1e-6), tmp_path / "c.sqlite")
    with pytest.raises(BudgetExceededError, match=r"exceeds budget_usd=\$1e-06.*allow_over_budget"):
        judge.judge(items(5))
    assert sum(fake.requests.values()) == 0
    make_judge(config(fake, budget_usd=1e-6, allow_over_budget=True), tmp_path / "c.sqlite").judge(items(5))
    assert fake.requests[MESSAGES] == 5


def test_missing_key_is_a_one_line_error_and_cached_rerun_needs_no_key(
    fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_judge(config(fake), tmp_path / "c.sqlite").judge(items(2))
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert all(v.cached for v in make_judge(config(fake), tmp_path / "c.sqlite").judge(items(2)))
    with pytest.raises(MissingAPIKeyError) as err:
        make_judge(config(fake), tmp_path / "c.sqlite").judge(items(3))
    assert "ANTHROPIC_API_KEY" in str(err.value) and "\n" not in str(err.value)
    assert fake.requests[MESSAGES] == 2


def test_key_never_appears_in_logs_or_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # includes the SDK's and httpx's own debug logs
    with FakeAnthropic(plan=["429", "malformed", "500", "500", "500", "500"], retry_after="0.05") as fake:
        make_judge(config(fake, max_concurrency=1, max_retries=1), tmp_path / "c.sqlite").judge(items(3))
        make_judge(config(fake, use_batches=True), tmp_path / "b.sqlite").judge(items(2, "batch"))
    out = capsys.readouterr()
    assert fake.api_keys == {SECRET}  # the key was sent
    assert "Sending HTTP Request" in caplog.text  # the SDK's own debug log was captured...
    assert SECRET not in caplog.text  # ...and never shows the key
    assert SECRET not in out.out + out.err
    assert SECRET not in (tmp_path / "c.sqlite").read_bytes().decode("latin-1")


def test_requests_per_minute_limit(fake: FakeAnthropic, tmp_path: Path) -> None:
    start = time.monotonic()
    make_judge(config(fake, requests_per_minute=600), tmp_path / "c.sqlite").judge(items(6))
    assert time.monotonic() - start >= 0.5  # 6 starts at least 0.1 s apart
    assert fake.requests[MESSAGES] == 6


# -- Message Batches --------------------------------------------------------------------------------


def test_batch_submit_poll_collect(tmp_path: Path) -> None:
    batch = items(6) + [
        JudgeItem("err", "Rubric E\nBATCH_RESULT=errored"),
        JudgeItem("exp", "Rubric X\nBATCH_RESULT=expired"),
        JudgeItem("words", "Rubric W\nJUDGE_SAYS=I think it is three"),
    ]
    state = tmp_path / "state.json"
    with FakeAnthropic(polls_before_end=3) as fake:
        judge = make_judge(config(fake, use_batches=True, batch_state_path=str(state)), tmp_path / "c.sqlite")
        est = judge.estimate(batch)
        verdicts = judge.judge(batch)
        assert [v.score for v in verdicts] == [0, 1, 2, 3, 0, 1, None, None, None]
        assert [v.raw for v in verdicts[6:]] == [None, None, "I think it is three"]
        assert fake.requests[CREATE] == 1 and fake.requests[RETRIEVE] >= 3
        assert set(fake.submitted.values()) == {1} and len(fake.submitted) == 9
        assert judge.report.errors == {"batch_errored": 1, "batch_expired": 1}
        assert json.loads(state.read_text()) == {"batches": []}
        # estimate: 9 requests at half price
        assert est.n_calls == 9 and est.batch
        assert est.input_tokens == sum(chars_over_4(r["params"]["messages"][0]["content"]) for r in fake.batches["msgbatch_0001"]["requests"])
        # by hand: 6 x 12 tokens (46 chars), 8 + 8 (29 chars), 10 (39 chars) = 98 in, 9 x 10 out;
        # half of claude-haiku-5-5's $0.10 / $0.50 per million: (98*0.10 + 90*0.50) / 2e6 = 27.4e-6
        assert (est.input_tokens, est.output_tokens) == (98, 90)
        assert est.usd == pytest.approx(2.74e-05, rel=1e-9)
        # rerun: only the two failed requests are asked again
        judge.judge(batch)
        assert fake.requests[CREATE] == 2 and len(fake.batches["msgbatch_0002"]["requests"]) == 2
        assert fake.requests[MESSAGES] == 0


def test_large_runs_are_split_into_several_batches(fake: FakeAnthropic, tmp_path: Path) -> None:
    judge = make_judge(config(fake, use_batches=True, batch_max_requests=3), tmp_path / "c.sqlite")
    verdicts = judge.judge(items(7, "split"))
    assert [v.score for v in verdicts] == [i % 4 for i in range(7)]
    assert [len(b["requests"]) for b in fake.batches.values()] == [3, 3, 1]
    assert set(fake.submitted.values()) == {1} and len(fake.billed) == 7


BATCH_SCRIPT = """
import json, logging, sys
from assistant_axis.judges import JudgeItem, make_judge
logging.basicConfig(level=logging.INFO)
cfg, cache, batch = json.load(open(sys.argv[1]))
make_judge(cfg, cache).judge([JudgeItem(k, p) for k, p in batch])
"""


def test_crash_mid_batch_resumes_without_resubmitting(tmp_path: Path) -> None:
    batch = items(20, "crash")
    state = tmp_path / "state.json"
    cache = tmp_path / "c.sqlite"
    with FakeAnthropic(polls_before_end=10**9) as fake:  # the batch never ends while the first process runs
        cfg = config(fake, use_batches=True, batch_state_path=str(state))
        args = tmp_path / "args.json"
        args.write_text(json.dumps([cfg, str(cache), [[it.key, it.prompt] for it in batch]]))
        script = tmp_path / "run_judge.py"
        script.write_text(BATCH_SCRIPT)
        proc = subprocess.Popen([sys.executable, str(script), str(args)], env=os.environ.copy())
        try:
            deadline = time.monotonic() + 30
            while fake.requests[RETRIEVE] < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fake.requests[RETRIEVE] >= 2, "the first process never polled"
            assert json.loads(state.read_text())["batches"][0]["id"] == "msgbatch_0001"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert VerdictCache(cache).count() == 0  # killed before any result arrived

        fake.polls_before_end = 0  # the batch ends while nobody is watching
        judge = make_judge(cfg, cache)
        verdicts = judge.judge(batch)
        assert [v.score for v in verdicts] == [i % 4 for i in range(20)]
        assert fake.requests[CREATE] == 1  # resumed, not resubmitted
        assert set(fake.submitted.values()) == {1} and len(fake.submitted) == 20
        assert len(fake.billed) == 20 and VerdictCache(cache).count() == 20
        assert json.loads(state.read_text()) == {"batches": []}
        assert make_judge(cfg, cache).estimate(batch).n_calls == 0
