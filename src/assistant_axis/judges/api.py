"""What the paid HTTP backends share: keys from env, prices, one retry policy, rate limits, a bounded pool.

The SDK clients are built with ``max_retries=0`` so there is exactly one retry policy, this
module's :class:`RetryPolicy`, for both backends and every call (messages, chat completions and
the batch endpoints). Retried: HTTP 408, 409, 429 and every 5xx (Anthropic's 529 included),
connection errors and resets, timeouts, truncated bodies and 200 replies whose body is not the
expected JSON; the wait is the server's ``retry-after-ms`` / ``retry-after`` when sent, else
exponential backoff from ``retry_backoff_s``. Any other status (400, 401, 402, 403, 404, ...) would
fail every item alike, so it stops the run at once with a one-line :class:`JudgeAPIError` naming
the status, the backend and the fix. A 200 reply whose text holds no score is not a fault: it is
cached as missing, so a rerun does not pay for it again.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .base import CostEstimate, Judge, JudgeError, JudgeItem, MissingAPIKeyError, Verdict, estimate_tokens
from .cache import VerdictCache

log = logging.getLogger("assistant_axis.judges")

# USD per million tokens (input, output), standard (non-batch) price for prompts under 100k tokens.
# Sources: platform.claude.com model pages, openai.com/api/pricing. Batch requests cost half.
PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-haiku-5-5": (0.10, 0.50),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-haiku-4-5-20251001": (1.0, 5.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-opus-4-5": (5.0, 25.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o-mini": (0.15, 0.60),
}
BATCH_DISCOUNT = 0.5
DEFAULT_MAX_TOKENS = 10  # a judge reply is one digit; room for a short preamble


def price_usd_per_mtok(model: str, cfg: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(input, output)`` USD per million tokens: the config's ``price_usd_per_mtok``, else the table's, else None."""
    price = cfg.get("price_usd_per_mtok")
    if price is not None:
        return float(price[0]), float(price[1])
    return PRICES_USD_PER_MTOK.get(model)


def estimate_cost(
    n_calls: int, tokens_in: int, tokens_out: int, price: tuple[float, float] | None, batch: bool = False
) -> CostEstimate:
    """The cost of ``n_calls`` with these token counts at ``price`` (batch requests at the batch discount)."""
    usd = None
    if price is not None:
        usd = (tokens_in * price[0] + tokens_out * price[1]) / 1e6
        if batch:
            usd *= BATCH_DISCOUNT
    return CostEstimate(n_calls, tokens_in, tokens_out, usd, batch)


class MalformedReplyError(Exception):
    """HTTP 200 whose body is not the expected JSON; retried like a transient server error."""


class JudgeAPIError(JudgeError):
    """A status that retrying cannot fix (bad request, key, credit, access or model): the run stops.

    ``status`` is the HTTP status and ``backend`` the judge backend; the message is one line that
    ends with what to change, and never holds the API key.
    """

    def __init__(self, message: str, status: int, backend: str):
        super().__init__(message)
        self.status = status
        self.backend = backend


# Statuses worth another attempt; every other 4xx is the caller's mistake and is raised at once.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 60.0  # a longer retry-after is capped: the run waits at most a minute per retry


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait before asking again, shared by every API backend.

    ``max_retries`` retries follow the first attempt. The wait before retry ``n`` (1-based) is the
    server's ``retry-after-ms`` / ``retry-after`` if it sent one (capped at a minute), else
    ``backoff_s * 2**(n-1)`` capped at ``backoff_max_s``, times a jitter in [0.5, 1] so that many
    threads hit by the same 429 do not all come back at the same instant.
    """

    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def delay(self, retry: int, exc: BaseException | None = None) -> float:
        """Seconds to wait before retry number ``retry`` after the error ``exc``."""
        hinted = retry_after_s(exc)
        if hinted is not None:
            return hinted
        return min(self.backoff_s * 2 ** (retry - 1), self.backoff_max_s) * random.uniform(0.5, 1.0)


def retry_after_s(exc: BaseException | None) -> float | None:
    """The wait the server asked for in ``retry-after-ms`` or ``retry-after`` (seconds), else None."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:  # an HTTP date: rare for these APIs, use the backoff instead
            continue
        if seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER_S)
    return None


def _fix_for(status: int, key_env: str, model: str) -> str:
    """What the user should change for a non-retryable status."""
    if status == 401:
        return f"set {key_env} to a valid API key"
    if status == 402:
        return "add credit or a payment method to the API account"
    if status == 403:
        return f"use a key in {key_env} that has access to model {model!r}, or choose another judge.model"
    if status == 404:
        return f"check judge.model ({model!r}) and judge.base_url"
    return "fix the request the message above rejects (judge.model, max_tokens, disable_thinking in the judge config)"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Reply:
    """The text of one completion and the token usage the API reported for it."""

    text: str
    input_tokens: int
    output_tokens: int


def api_key_from_env(var: str, allow_empty: bool = False) -> str:
    """The key in ``$var``; a one-line error naming only the variable if it is unset.

    ``allow_empty`` returns the placeholder ``"EMPTY"`` instead, for self-hosted servers (vLLM's
    OpenAI-compatible server accepts any key unless started with ``--api-key``).
    """
    key = os.environ.get(var, "").strip()
    if key:
        return key
    if allow_empty:
        return "EMPTY"
    raise MissingAPIKeyError(f"{var} is not set: export it to use this judge backend")


def is_local_url(url: str | None) -> bool:
    """True for a base_url on this machine (localhost or a loopback address)."""
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunStoppedError(Exception):
    """Raised in worker threads once another thread hit a fatal status, so they start nothing new."""


class RateLimiter:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class APIJudge(Judge):
    """A judge that sends one chat request per prompt to an HTTP API; subclasses build the client."""

    paid = True
    key_env: str = ""

    def __init__(self, model: str, cache: VerdictCache, cfg: Mapping[str, Any]):
        super().__init__(model, cache, cfg.get("budget_usd"), bool(cfg.get("allow_over_budget", False)))
        self.base_url: str | None = cfg.get("base_url")
        self.max_tokens = int(cfg.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.max_concurrency = int(cfg.get("max_concurrency", 4))
        self.max_retries = int(cfg.get("max_retries", 4))
        self.retry = RetryPolicy(self.max_retries, float(cfg.get("retry_backoff_s", 0.5)))
        self.timeout_s = float(cfg.get("timeout_s", 60.0))
        self._stop = threading.Event()  # set when a fatal error ends the run: no new attempts start
        self.limiter = RateLimiter(cfg.get("requests_per_minute"))
        self.price = price_usd_per_mtok(model, cfg)
        self._client_obj: Any = None

    # -- subclass hooks --------------------------------------------------------------------------

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _complete(self, client: Any, prompt: str) -> Reply:
        """Send one prompt; raise :class:`MalformedReplyError` if the body is not a usable reply."""
        raise NotImplementedError

    # The official SDKs (``anthropic``, ``openai``) are generated alike and name their errors alike;
    # a subclass names its SDK module in ``sdk`` and the three error families below follow.
    sdk = ""

    def _sdk_error(self, name: str) -> type[BaseException]:
        return getattr(importlib.import_module(self.sdk), name)

    def _transient_errors(self) -> tuple[type[BaseException], ...]:
        """SDK errors raised without an HTTP status: connection refused or reset, timeout (``APITimeoutError`` is one)."""
        return (self._sdk_error("APIConnectionError"),)

    def _status_errors(self) -> tuple[type[BaseException], ...]:
        """SDK errors that carry an HTTP status (``status_code``) and the response."""
        return (self._sdk_error("APIStatusError"),)

    def _sdk_errors(self) -> tuple[type[BaseException], ...]:
        """The SDK's base error: anything else it raises fails that one item (not retried, not cached)."""
        return (self._sdk_error("APIError"),)

    # -- shared machinery ----------------------------------------------------------------------

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """As :meth:`Judge.judge`; a fatal error of an earlier call no longer blocks this one."""
        self._stop.clear()  # before _resume, which may already call the API
        return super().judge(items)

    @property
    def client(self) -> Any:
        """The SDK client, created on first use so a fully cached rerun needs no key."""
        if self._client_obj is None:
            self._client_obj = self._make_client()
        return self._client_obj

    def _estimate(self, todo: Mapping[str, str], batch: bool = False) -> CostEstimate:
        tokens_in = sum(estimate_tokens(p) for p in todo.values())
        return estimate_cost(len(todo), tokens_in, len(todo) * self.max_tokens, self.price, batch)

    def _ask(self, prompt: str) -> Reply:
        """One prompt under the retry policy; each attempt waits its turn at the rate limiter."""

        def attempt() -> Reply:
            self.limiter.acquire()
            return self._complete(self.client, prompt)

        return self._with_retries(attempt, "request")

    def _with_retries(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` with :attr:`retry`: transient faults are retried, a fatal status raises :class:`JudgeAPIError`.

        After the last retry the last error propagates (the item is then counted failed, not cached).
        """
        retries = 0
        while True:
            if self._stop.is_set():
                raise RunStoppedError("judge run stopped by an earlier fatal error")
            try:
                return call()
            except MalformedReplyError as exc:
                reason: str = str(exc)
                last: BaseException = exc
            except self._transient_errors() as exc:
                reason, last = type(exc).__name__, exc
            except self._status_errors() as exc:
                status = int(getattr(exc, "status_code", 0))
                if status not in RETRYABLE_STATUSES and status < 500:
                    self._stop.set()
                    raise self._fatal(exc, status) from None
                reason, last = f"HTTP {status}", exc
            retries += 1
            if retries > self.retry.max_retries:
                raise last
            wait_s = self.retry.delay(retries, last)
            log.warning(
                "judge %s: %s failed (%s), retry %d/%d in %.2f s",
                self.backend, what, reason, retries, self.retry.max_retries, wait_s,
            )
            if self._stop.wait(wait_s):
                raise RunStoppedError("judge run stopped by an earlier fatal error")

    def _fatal(self, exc: BaseException, status: int) -> JudgeAPIError:
        """The one-line error for a non-retryable status; the server's message, never the key."""
        body = getattr(exc, "body", None)
        detail = ""
        if isinstance(body, dict):
            err = body.get("error", body)
            detail = str(err.get("message", "")) if isinstance(err, dict) else str(err)
        key = getattr(self._client_obj, "api_key", None)
        if key and key != "EMPTY":
            detail = detail.replace(key, "***")
        detail = f" ({_one_line(detail)})" if detail else ""
        msg = f"judge {self.backend}/{self.model}: HTTP {status}{detail}; not retried: {_fix_for(status, self.key_env, self.model)}"
        return JudgeAPIError(msg, status, self.backend)

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        """Ask every prompt on a bounded pool; cache each verdict as soon as its reply arrives."""
        self.client  # noqa: B018 - fail on a missing key before any thread starts
        fatal: tuple[type[BaseException], ...] = (JudgeAPIError,)
        item_errors = (*self._transient_errors(), *self._status_errors(), *self._sdk_errors(), MalformedReplyError)
        results: dict[str, tuple[int | None, str]] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix=f"judge-{self.backend}")
        pending: dict[Future[Reply], str] = {}
        items = iter(todo.items())

        def submit_next() -> None:
            nxt = next(items, None)
            if nxt is not None:
                pending[pool.submit(self._ask, nxt[1])] = nxt[0]

        try:
            # keep at most 2x max_concurrency futures queued so an abort leaves little work behind
            for _ in range(2 * self.max_concurrency):
                submit_next()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    h = pending.pop(fut)
                    self._collect_reply(h, fut, results, fatal, item_errors)
                    submit_next()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def _collect_reply(
        self,
        h: str,
        fut: Future[Reply],
        results: dict[str, tuple[int | None, str]],
        fatal: tuple[type[BaseException], ...],
        item_errors: tuple[type[BaseException], ...],
    ) -> None:
        try:
            reply = fut.result()
        except fatal:
            raise
        except RunStoppedError:  # another thread hit a fatal status; its error is raised instead
            return
        except item_errors as exc:  # retries exhausted: leave uncached for a rerun
            log.warning("judge %s: call failed after retries: %s", self.backend, _describe(exc))
            self._fail(type(exc).__name__)
            return
        self.report.called += 1
        self.report.input_tokens += reply.input_tokens
        self.report.output_tokens += reply.output_tokens
        score = self.parse(reply.text)
        self._store([(h, score, reply.text)])
        results[h] = (score, reply.text)


def _describe(exc: BaseException) -> str:
    """A short, key-free description of an SDK error for logs."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def reply_from_json(text: str, extract: Callable[[dict[str, Any]], Reply]) -> Reply:
    """Parse a raw JSON body with ``extract``; any shape problem becomes :class:`MalformedReplyError`."""
    try:
        return extract(json.loads(text))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise MalformedReplyError(f"unexpected reply body ({type(exc).__name__})") from exc

