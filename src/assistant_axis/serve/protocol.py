"""The OpenAI chat-completions request as this server reads it, its errors and its replies.

Why strict checks up front: a bad field must come back as a 4xx in the OpenAI error shape
(``{"error": {"message", "type", "param", "code"}}``) naming the field and the fix, before the
request reaches the engine, so one client's mistake never disturbs the batch others share.
The project's own controls are extra body fields (what the ``openai`` client sends as
``extra_body``): ``capping`` and ``return_projections``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..transcripts import ROLES
from .setup import AUTO, OFF, ServeSetup

DEFAULT_MAX_TOKENS = 256


class APIError(Exception):
    """An error reply: HTTP status plus the OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A validated chat request."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    capping: str  # "off", "auto" or an experiment id
    return_projections: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be a number from {lo:g} to {hi:g}, got {value!r}", param=key, code="invalid_value")
    return float(value)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages",
                       code="invalid_value")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise APIError(400, f"'{where}' must be an object with 'role' and 'content'", param=where, code="invalid_value")
        role, content = msg.get("role"), msg.get("content")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise APIError(400, f"'{where}.role' is {role!r}; use one of {', '.join(ROLES)}", param=f"{where}.role",
                           code="invalid_role")
        if role == "system" and i != 0:
            raise APIError(400, f"'{where}.role': a system message may only come first", param=f"{where}.role",
                           code="invalid_role")
        if isinstance(content, list):  # content parts: text only
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise APIError(400, f"'{where}.content': only text parts are supported", param=f"{where}.content",
                               code="invalid_value")
            content = "".join(parts)
        if not isinstance(content, str):
            raise APIError(400, f"'{where}.content' must be a string", param=f"{where}.content", code="invalid_value")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise APIError(400, f"the last message must be a user message, got {out[-1]['role']!r}; "
                       "end 'messages' with the user turn to answer", param=f"messages[{len(out) - 1}].role",
                       code="invalid_role")
    return out


def parse_chat(body: dict[str, Any], setup: ServeSetup, max_model_len: int) -> ChatRequest:
    """Check every field this server uses; unknown OpenAI fields are ignored, as OpenAI-compatible servers do."""
    messages = _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and model not in (setup.model_id, setup.model):
        raise APIError(404, f"model {model!r} is not served here; use {setup.model_id!r} (GET /v1/models)",
                       param="model", code="model_not_found")
    n = body.get("n", 1)
    if n not in (1, None):
        raise APIError(400, "'n' must be 1 (one choice per request)", param="n", code="invalid_value")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = int(_number(body, key, DEFAULT_MAX_TOKENS, 1, max_model_len - 1))
    if body.get(key) is not None and not isinstance(body[key], int):
        raise APIError(400, f"'{key}' must be an integer", param=key, code="invalid_value")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-6, 1.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise APIError(400, f"'seed' must be a non-negative integer, got {seed!r}", param="seed", code="invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream", code="invalid_value")
    options = body.get("stream_options") or {}
    capping = body.get("capping", OFF)
    if capping in (None, False):
        capping = OFF
    if capping in (True, "on"):
        capping = setup.default_experiment or "on"
    if not isinstance(capping, str):
        raise APIError(400, f"'capping' must be \"off\", \"auto\" or an experiment id, got {capping!r}", param="capping",
                       code="invalid_value")
    if capping not in (OFF, AUTO) and capping not in setup.experiments:
        known = ", ".join(setup.experiments) or "none: start the server with a capping file"
        raise APIError(400, f"'capping': unknown experiment {capping!r}; use \"off\", \"auto\" or one of: {known}",
                       param="capping", code="unknown_experiment")
    if capping == AUTO and (setup.default_experiment is None or setup.threshold is None):
        raise APIError(400, "'capping': \"auto\" needs a capping file with a floor at the target layer "
                       "(or --auto-threshold) when the server starts", param="capping", code="auto_unavailable")
    projections = body.get("return_projections", False)
    if not isinstance(projections, bool):
        raise APIError(400, "'return_projections' must be true or false", param="return_projections", code="invalid_value")
    return ChatRequest(messages, max_tokens, temperature, top_p, seed, stream, capping, projections,
                       bool(isinstance(options, dict) and options.get("include_usage")))


def too_long(n_prompt: int, max_tokens: int, max_model_len: int) -> APIError:
    return APIError(400, f"the prompt has {n_prompt} tokens and max_tokens is {max_tokens}: together more than the "
                    f"model's context of {max_model_len} tokens; shorten 'messages' or lower 'max_tokens'",
                    param="messages", code="context_length_exceeded")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, info: dict[str, Any], n_prompt: int, n_tokens: int) -> dict[str, Any]:
    """A non-streamed reply; the project's measurements ride in ``axis``."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": info["finish_reason"]}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_tokens, "total_tokens": n_prompt + n_tokens},
        "axis": info,
    }


def chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None,
          axis: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One server-sent event of a streamed reply."""
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if axis is not None:
        out["axis"] = axis
    if usage is not None:
        out["usage"] = usage
    return out
