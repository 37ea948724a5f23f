"""``anthropic`` backend: Claude through the official SDK, one message per prompt or Message Batches.

Synchronous mode sends ``messages.create`` calls on a bounded thread pool (see :mod:`.api`);
every call, batch endpoints included, goes through the shared retry policy of :mod:`.api`.
Batch mode (``use_batches: true``, half price, results within 24 h) submits the uncached prompts
as Message Batches (up to ``batch_max_requests`` each) with ``custom_id`` = the prompt's sha256
(64 hex characters, the API's maximum length), and records each batch id and its custom ids in a
JSON state file *before* polling. A process that dies while the batch runs resumes it on the next
``judge()`` call - it polls and collects the saved batch instead of submitting the prompts again. Collected verdicts go to the
cache before the batch leaves the state file, and the cache ignores duplicates, so a crash during
collection neither loses nor double-counts an item. Requests that come back errored, expired or
canceled are not cached: they are reported as failed, stay missing, and the next run asks again.

The one unavoidable gap: a crash between the API accepting a batch and the state file being
written (a few milliseconds) leaves a batch the next run does not know about, so its prompts would
be submitted again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import write_json
from .api import APIJudge, Reply, api_key_from_env, reply_from_json
from .base import CostEstimate
from .cache import VerdictCache

log = logging.getLogger("assistant_axis.judges")

DEFAULT_MODEL = "claude-haiku-5-5"
# The API takes up to 100,000 requests or 256 MB per batch; judge prompts run to ~3 kB each, so
# 20,000 keeps a batch near 60 MB, well inside the size limit and quick to upload.
MAX_BATCH_REQUESTS = 20_000
_STORE_EVERY = 500  # batch results committed to the cache in groups of this size


def _reply_text(blocks: list[dict[str, Any]], stop_reason: str | None) -> str:
    """The text blocks joined; a reply without text (e.g. a safety refusal) is recorded as such."""
    text = "".join(block["text"] for block in blocks if block.get("type") == "text")
    return text or f"[no text; stop_reason={stop_reason}]"


def _message_reply(body: dict[str, Any]) -> Reply:
    if body.get("type") != "message":
        raise ValueError("not a message")
    usage = body["usage"]
    return Reply(_reply_text(body["content"], body.get("stop_reason")), int(usage["input_tokens"]), int(usage["output_tokens"]))


class AnthropicJudge(APIJudge):
    """Claude judge; ``use_batches`` switches from concurrent calls to the Message Batches API."""

    backend = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    sdk = "anthropic"

    def __init__(self, model: str, cache: VerdictCache, cfg: Mapping[str, Any], state_path: Path):
        super().__init__(model, cache, cfg)
        self.use_batches = bool(cfg.get("use_batches", False))
        self.poll_interval_s = float(cfg.get("poll_interval_s", 30.0))
        self.batch_max_requests = int(cfg.get("batch_max_requests", MAX_BATCH_REQUESTS))
        self.state_path = state_path
        self.disable_thinking = bool(cfg.get("disable_thinking", True))

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.Anthropic(
            api_key=api_key_from_env(self.key_env),
            base_url=self.base_url,
            max_retries=0,  # one retry policy for every backend: APIJudge._with_retries
            timeout=self.timeout_s,
        )

    def _params(self, prompt: str) -> dict[str, Any]:
        # No temperature: Claude 5.x models reject non-default sampling parameters with a 400.
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        if self.disable_thinking:
            # Haiku 5.5 thinks by default and thinking counts toward max_tokens: a 10-token judge
            # would often return no text at all.
            params["thinking"] = {"type": "disabled"}
        return params

    def _complete(self, client: Any, prompt: str) -> Reply:
        raw = client.messages.with_raw_response.create(**self._params(prompt))
        return reply_from_json(raw.http_response.text, _message_reply)

    def _estimate(self, todo: Mapping[str, str]) -> CostEstimate:
        return super()._estimate(todo, batch=self.use_batches)

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        if not self.use_batches:
            return super()._run(todo)
        hashes = list(todo)
        for i in range(0, len(hashes), self.batch_max_requests):
            chunk = hashes[i : i + self.batch_max_requests]
            requests = [{"custom_id": h, "params": self._params(todo[h])} for h in chunk]
            batch = self._with_retries(lambda r=requests: self.client.messages.batches.create(requests=r), "batch create")
            self._save_state([*self._load_state(), {"id": batch.id, "model": self.model, "custom_ids": chunk}])
            log.info("judge anthropic: submitted batch %s with %d requests", batch.id, len(chunk))
        return self._collect_batches()

    # -- batch state and collection ------------------------------------------------------------

    def _load_state(self) -> list[dict[str, Any]]:
        if not self.state_path.exists():
            return []
        return list(json.loads(self.state_path.read_text(encoding="utf-8"))["batches"])

    def _save_state(self, batches: list[dict[str, Any]]) -> None:
        write_json(self.state_path, {"batches": batches})

    def _resume(self) -> None:
        if any(b["model"] == self.model for b in self._load_state()):
            log.info("judge anthropic: resuming unfinished batches from %s", self.state_path)
            self._collect_batches()

    def _collect_batches(self) -> dict[str, tuple[int | None, str]]:
        """Wait for every saved batch of this model, cache its results, then drop it from the state."""
        results: dict[str, tuple[int | None, str]] = {}
        for entry in [b for b in self._load_state() if b["model"] == self.model]:
            self._wait(entry["id"])
            results.update(self._collect_batch(entry["id"], set(entry["custom_ids"])))
            self._save_state([b for b in self._load_state() if b["id"] != entry["id"]])
        return results

    def _wait(self, batch_id: str) -> None:
        while True:
            batch = self._with_retries(lambda: self.client.messages.batches.retrieve(batch_id), "batch poll")
            if batch.processing_status == "ended":
                return
            counts = batch.request_counts
            log.info(
                "judge anthropic: batch %s %s (%d processing, %d succeeded)",
                batch_id, batch.processing_status, counts.processing, counts.succeeded,
            )
            time.sleep(self.poll_interval_s)

    def _collect_batch(self, batch_id: str, custom_ids: set[str]) -> dict[str, tuple[int | None, str]]:
        results: dict[str, tuple[int | None, str]] = {}
        rows: list[tuple[str, int | None, str]] = []
        # the results are read to the end inside the retry, so a connection lost midway re-reads them all
        lines = self._with_retries(lambda: list(self.client.messages.batches.results(batch_id)), "batch results")
        for line in lines:
            h = line.custom_id
            if h not in custom_ids:
                log.warning("judge anthropic: batch %s returned an unknown custom_id, ignored", batch_id)
                continue
            if line.result.type != "succeeded":
                self._fail(f"batch_{line.result.type}")
                continue
            message = line.result.message
            text = _reply_text([block.to_dict() for block in message.content], message.stop_reason)
            self.report.called += 1
            self.report.input_tokens += message.usage.input_tokens
            self.report.output_tokens += message.usage.output_tokens
            score = self.parse(text)
            rows.append((h, score, text))
            results[h] = (score, text)
            if len(rows) >= _STORE_EVERY:
                self._store(rows)
                rows = []
        self._store(rows)
        return results
