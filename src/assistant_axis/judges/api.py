"""What the paid HTTP backends share: keys from env, prices, rate limits, a bounded thread pool.

Retries are left to the official SDKs, which already retry 408/409/429/5xx (Anthropic's 529
included), connection errors and timeouts with exponential backoff and honour ``retry-after`` /
``retry-after-ms``; this module only makes that policy explicit (``max_retries``, ``timeout_s``)
and adds what the SDKs lack: a requests-per-minute limit, a concurrency bound, retries of
replies whose body is not the expected JSON, and writing each verdict to the cache on arrival.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .base import CostEstimate, Judge, MissingAPIKeyError, estimate_tokens
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
        self.timeout_s = float(cfg.get("timeout_s", 60.0))
        self.limiter = RateLimiter(cfg.get("requests_per_minute"))
        self.price = price_usd_per_mtok(model, cfg)
        self._client_obj: Any = None

    # -- subclass hooks --------------------------------------------------------------------------

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _complete(self, client: Any, prompt: str) -> Reply:
        """Send one prompt; raise :class:`MalformedReplyError` if the body is not a usable reply."""
        raise NotImplementedError

    def _fatal_errors(self) -> tuple[type[BaseException], ...]:
        """SDK errors that will fail every request alike (bad key, no such model): abort the run."""
        raise NotImplementedError

    def _item_errors(self) -> tuple[type[BaseException], ...]:
        """Errors that fail one item only (SDK gave up after retries, malformed body); others propagate."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------

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
        """One prompt, with the SDK's retries plus up to ``max_retries`` retries of malformed bodies."""
        retries = 0
        while True:
            self.limiter.acquire()
            try:
                return self._complete(self.client, prompt)
            except MalformedReplyError:
                retries += 1
                if retries > self.max_retries:
                    raise
                log.warning("judge %s: malformed reply body, retrying (%d/%d)", self.backend, retries, self.max_retries)

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        """Ask every prompt on a bounded pool; cache each verdict as soon as its reply arrives."""
        self.client  # noqa: B018 - fail on a missing key before any thread starts
        fatal, item_errors = self._fatal_errors(), self._item_errors()
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
        except item_errors as exc:  # the SDK gave up after its retries: leave uncached for a rerun
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

