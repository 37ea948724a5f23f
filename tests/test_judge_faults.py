"""Judge API faults and load, with the real SDKs against loopback servers speaking the real wire formats.

One retry policy serves both paid backends (``judges/api.py``), so every fault is checked on both.
Backoff values are tiny so the whole file stays fast; the tests that check a wait use the
server's ``retry-after`` or a larger ``retry_backoff_s`` on purpose.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.api_servers import FakeAnthropic, FakeAPI, FakeOpenAI

from assistant_axis.judges import JudgeAPIError, JudgeItem, VerdictCache, make_judge
from assistant_axis.judges.api import RetryPolicy

KEYS = {"anthropic": ("ANTHROPIC_API_KEY", "fake-anthropic-key-FAULTS-91c3"), "openai": ("OPENAI_API_KEY", "fake-openai-key-FAULTS-4b7e")}
ROUTES = {"anthropic": "POST /v1/messages", "openai": "POST /v1/chat/completions"}
BACKENDS = ["anthropic", "openai"]


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, key in KEYS.values():
        monkeypatch.setenv(var, key)


def server(backend: str, **kw: Any) -> FakeAPI:
    return (FakeAnthropic if backend == "anthropic" else FakeOpenAI)(**kw)


def config(backend: str, fake: FakeAPI, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "backend": backend,
        "base_url": fake.url if backend == "anthropic" else f"{fake.url}/v1",
        "max_concurrency": 1,
        "max_retries": 3,
        "retry_backoff_s": 0.01,
        "timeout_s": 0.4,
        "budget_usd": 1.0,
    }
    if backend == "openai":
        cfg["model"] = "gpt-4.1-mini"
    return {**cfg, **over}


def items(n: int, tag: str = "") -> list[JudgeItem]:
    return [JudgeItem(f"r{i}", f"Rubric {tag} item {i}: judge this reply.\nJUDGE_SAYS={i % 4}") for i in range(n)]


RETRIED = ["408", "429", "429-bare", "500", "502", "503", "529", "timeout", "reset", "truncated", "nonjson", "malformed"]


@pytest.mark.parametrize("fault", RETRIED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_transient_fault_is_retried_and_paid_once(backend: str, fault: str, tmp_path: Path) -> None:
    with server(backend, plan=[fault], retry_after="0.01", timeout_delay=1.0) as fake:
        judge = make_judge(config(backend, fake), tmp_path / "c.sqlite")
        verdicts = judge.judge(items(2))
    assert [v.score for v in verdicts] == [0, 1]
    assert fake.failures == {fault: 1}
    assert fake.requests[ROUTES[backend]] == 3 and len(fake.billed) == 2
    assert judge.report.failed == 0 and VerdictCache(tmp_path / "c.sqlite").count() == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_429_waits_for_retry_after_and_bare_429_backs_off(backend: str, tmp_path: Path) -> None:
    def timed(judge: Any, fake: FakeAPI, fault: str) -> float:
        judge.judge(items(1, "warm-up"))  # SDK import and client start are not part of the wait
        fake.plan.append(fault)
        start = time.monotonic()
        [v] = judge.judge(items(1))
        assert v.score == 0 and fake.failures[fault] == 1
        return time.monotonic() - start

    with server(backend, retry_after="0.6") as fake:
        assert timed(make_judge(config(backend, fake), tmp_path / "a.sqlite"), fake, "429") >= 0.6  # backoff: 0.01 s
    with server(backend) as fake:
        judge = make_judge(config(backend, fake, retry_backoff_s=0.5), tmp_path / "b.sqlite")
        assert timed(judge, fake, "429-bare") >= 0.25  # first backoff: 0.5 s x jitter in [0.5, 1]


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=9, backoff_s=1.0, backoff_max_s=8.0)
    for retry, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        waits = [policy.delay(retry) for _ in range(50)]
        assert full * 0.5 <= min(waits) and max(waits) <= full


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_fault_kind_counts_toward_one_retry_budget(backend: str, tmp_path: Path) -> None:
    faults = ["429-bare", "reset", "malformed", "503"]
    with server(backend, plan=faults) as fake:
        [v] = make_judge(config(backend, fake, max_retries=4), tmp_path / "a.sqlite").judge(items(1))
        assert v.score == 0 and fake.requests[ROUTES[backend]] == 5
    with server(backend, plan=faults) as fake:
        judge = make_judge(config(backend, fake, max_retries=3), tmp_path / "b.sqlite")
        [v] = judge.judge(items(1))
        assert (v.score, v.raw, v.cached) == (None, None, False)
        assert fake.requests[ROUTES[backend]] == 4 and judge.report.failed == 1
        assert VerdictCache(tmp_path / "b.sqlite").count() == 0  # failed calls are not cached...
        [v] = judge.judge(items(1))  # ...so the next run asks again and gets the score
        assert v.score == 0 and fake.requests[ROUTES[backend]] == 5 and len(fake.billed) == 1


FATAL = {400: "judge config", 401: "set {var} to a valid API key", 402: "credit", 403: "has access to model", 404: "judge.model"}


@pytest.mark.parametrize("status", sorted(FATAL))
@pytest.mark.parametrize("backend", BACKENDS)
def test_client_error_stops_the_run_at_once_with_one_line(
    backend: str, status: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    var, key = KEYS[backend]
    with server(backend, plan=[str(status)] * 20) as fake:
        judge = make_judge(config(backend, fake, max_concurrency=4), tmp_path / "c.sqlite")
        with pytest.raises(JudgeAPIError) as err:
            judge.judge(items(20))
    msg = str(err.value)
    assert (err.value.status, err.value.backend) == (status, backend)
    assert "\n" not in msg and f"HTTP {status}" in msg and backend in msg
    assert FATAL[status].format(var=var) in msg
    assert key not in msg and key not in caplog.text
    # not retried: at most the requests already in flight when the first answer came back
    assert 1 <= fake.requests[ROUTES[backend]] <= 4 and fake.failures[str(status)] == fake.requests[ROUTES[backend]]
    assert VerdictCache(tmp_path / "c.sqlite").count() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_reply_without_a_score_is_cached_as_missing_and_not_paid_again(backend: str, tmp_path: Path) -> None:
    batch = [JudgeItem("words", "Rubric\nJUDGE_SAYS=hard to say"), JudgeItem("empty", "Rubric\nJUDGE_SAYS="), *items(1)]
    with server(backend) as fake:
        judge = make_judge(config(backend, fake), tmp_path / "c.sqlite")
        verdicts = judge.judge(batch)
        assert [(v.score, v.raw) for v in verdicts[::2]] == [(None, "hard to say"), (0, "0")]
        assert verdicts[1].score is None and judge.report.unparsed == 2 and judge.report.failed == 0
        again = make_judge(config(backend, fake), tmp_path / "c.sqlite").judge(batch)
        assert all(v.cached for v in again) and [v.score for v in again] == [None, None, 0]
        assert fake.requests[ROUTES[backend]] == 3


def test_batch_endpoints_use_the_same_retry_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 on batch create, poll and results is retried; the batch is submitted exactly once."""
    with FakeAnthropic(polls_before_end=1) as fake:
        plan = {"POST /v1/messages/batches": 1, "GET /v1/messages/batches/{id}": 1, "GET /v1/messages/batches/{id}/results": 1}
        original = fake._count

        def flaky(route: str) -> None:
            original(route)
            if plan.get(route):
                plan[route] -= 1
                raise _Fail503

        monkeypatch.setattr(fake, "_count", flaky)
        orig_handle = fake.handle

        def handle(*args: Any) -> Any:
            try:
                return orig_handle(*args)
            except _Fail503:
                return 503, {"content-type": "application/json"}, b'{"type":"error","error":{"type":"api_error","message":"x"}}', 0.0

        monkeypatch.setattr(fake, "handle", handle)
        judge = make_judge(config("anthropic", fake, use_batches=True, poll_interval_s=0.01), tmp_path / "c.sqlite")
        verdicts = judge.judge(items(5, "batch"))
    assert [v.score for v in verdicts] == [0, 1, 2, 3, 0]
    assert len(fake.batches) == 1 and set(fake.submitted.values()) == {1} and len(fake.billed) == 5
    assert fake.requests["POST /v1/messages/batches"] == 2 and fake.requests["GET /v1/messages/batches/{id}/results"] == 2


class _Fail503(Exception):
    pass


# -- load ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_is_bounded_and_used(backend: str, tmp_path: Path) -> None:
    with server(backend, reply_delay=0.1) as fake:
        make_judge(config(backend, fake, max_concurrency=3), tmp_path / "c.sqlite").judge(items(12))
    assert fake.max_in_flight == 3 and len(fake.billed) == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_times_the_rate_limit_gets_every_score_and_no_duplicate_call(backend: str, tmp_path: Path) -> None:
    # 8 threads x up to 50 replies/s each = up to 400 requests/s offered to a server that serves 10/s
    n = 30
    with server(backend, rate_limit_per_s=10, reply_delay=0.02) as fake:
        # timeout_s generous: a timed-out reply may have been billed, and this test is about 429s
        judge = make_judge(config(backend, fake, max_concurrency=8, max_retries=30, timeout_s=10), tmp_path / "c.sqlite")
        start = time.monotonic()
        verdicts = judge.judge(items(n, "load"))
        elapsed = time.monotonic() - start
    assert [v.score for v in verdicts] == [i % 4 for i in range(n)]
    assert fake.failures["rate-limited"] >= 1 and elapsed >= 2.0  # the limit was hit and held: 30 calls at 10/s
    assert len(fake.billed) == n and len(set(fake.billed)) == n  # each prompt paid exactly once
    assert fake.max_in_flight <= 8 and judge.report.failed == 0
    assert VerdictCache(tmp_path / "c.sqlite").count() == n


@pytest.mark.parametrize("backend", BACKENDS)
def test_fatal_error_message_never_echoes_the_key(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that quotes the key back in its error body: the one-line error shows *** instead."""
    _, key = KEYS[backend]
    with server(backend, plan=["401"]) as fake:
        original = fake.error_body
        monkeypatch.setattr(fake, "error_body", lambda kind, message: original(kind, f"invalid x-api-key {key}"))
        with pytest.raises(JudgeAPIError) as err:
            make_judge(config(backend, fake), tmp_path / "c.sqlite").judge(items(1))
    assert "invalid x-api-key ***" in str(err.value) and key not in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerun_after_a_fatal_error_pays_only_for_the_rest(backend: str, tmp_path: Path) -> None:
    with server(backend, plan=["", "", "", "403"]) as fake:  # "" = served normally
        judge = make_judge(config(backend, fake), tmp_path / "c.sqlite")
        with pytest.raises(JudgeAPIError):
            judge.judge(items(6))
        assert VerdictCache(tmp_path / "c.sqlite").count() == 3  # what arrived before the 403 is kept
        verdicts = judge.judge(items(6))  # the same judge object: the earlier stop does not linger
    assert [v.score for v in verdicts] == [0, 1, 2, 3, 0, 1] and [v.cached for v in verdicts] == [True] * 3 + [False] * 3
    assert len(fake.billed) == 6 and fake.requests[ROUTES[backend]] == 7
