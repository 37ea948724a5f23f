"""``openai`` backend: any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, ...).

The key comes from ``OPENAI_API_KEY``. When ``base_url`` points at this machine (localhost or a
loopback address, e.g. a vLLM server started here) and the variable is unset, the placeholder
key ``EMPTY`` is sent, as vLLM expects when it runs without ``--api-key``.
"""

from __future__ import annotations

from typing import Any

from .api import APIJudge, Reply, api_key_from_env, is_local_url, reply_from_json

DEFAULT_MODEL = "gpt-4.1-mini"  # the reference project's judge


def _completion_reply(body: dict[str, Any]) -> Reply:
    text = body["choices"][0]["message"]["content"]
    if not isinstance(text, str):
        raise TypeError("no text content")
    usage = body.get("usage") or {}
    return Reply(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


class OpenAIJudge(APIJudge):
    """Judge on an OpenAI-compatible server; ``temperature`` 0 and ``max_tokens`` from the config."""

    backend = "openai"
    key_env = "OPENAI_API_KEY"
    sdk = "openai"

    def _make_client(self) -> Any:
        import openai

        return openai.OpenAI(
            api_key=api_key_from_env(self.key_env, allow_empty=is_local_url(self.base_url)),
            base_url=self.base_url,
            max_retries=0,  # one retry policy for every backend: APIJudge._with_retries
            timeout=self.timeout_s,
        )

    def _complete(self, client: Any, prompt: str) -> Reply:
        raw = client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            temperature=0.0,
        )
        return reply_from_json(raw.http_response.text, _completion_reply)
