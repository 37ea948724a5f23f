"""Fake Anthropic and OpenAI HTTP servers on 127.0.0.1 speaking the real wire formats.

The judges' tests run the real ``anthropic`` and ``openai`` SDK clients against these servers, so
retries, headers and response parsing are exercised exactly as against the real APIs. Each server
counts what it receives and bills (a reply delivered with 200), so tests can assert how many calls
were made and that a rerun makes none.

What the judge "says" is scripted in the prompt: ``JUDGE_SAYS=<text>`` (to the end of the line)
is the reply text (default ``"3"``); for batches ``BATCH_RESULT=errored|expired`` makes that
request fail. Failures of the synchronous endpoints are scripted with ``server.plan``, consumed one
entry per request: ``"429"`` (with ``retry-after``), ``"529"``, ``"500"``, ``"timeout"`` (answers
after ``timeout_delay`` seconds, beyond the client's timeout), ``"malformed"`` (200 with a body
that is not JSON), and for the fault tests: ``"429-bare"`` (no ``retry-after``), ``"408"``,
``"502"``, ``"503"``, ``"400"``, ``"401"``, ``"402"``, ``"403"``, ``"404"`` (in the API's error
envelope), ``"reset"`` (the connection is closed with a TCP reset and no response),
``"truncated"`` (headers promise more body than is sent before the connection closes) and
``"nonjson"`` (200 with an HTML body). ``reply_delay`` holds every served reply that long, and
``max_in_flight`` records the most requests the server was handling at once. ``rate_limit_per_s``
serves at most that many requests in any one-second window and answers the rest 429 with the
``retry-after`` that frees a slot, as a rate-limited API does. ``request_delay`` makes every POST
wait that long *before* it is handled (the kill tests: a slow API a job can die in front of); a
client that hangs up meanwhile is neither handled nor billed and is counted in ``abandoned``.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SAYS_RE = re.compile(r"JUDGE_SAYS=([^\n]*)")
_BATCH_RE = re.compile(r"BATCH_RESULT=(\w+)")


def scripted_reply(prompt: str) -> str:
    m = _SAYS_RE.search(prompt)
    return m.group(1) if m else "3"


def chars_over_4(text: str) -> int:
    """The fake's own token count (ceil(chars / 4)), computed independently of the judge code."""
    return (len(text) + 3) // 4


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access log
        pass

    def _client_left(self) -> bool:
        """True when the client closed its connection (EOF or reset) while its request waited."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        app = self.server.app
        if method == "POST" and app.request_delay:
            time.sleep(app.request_delay)
            if self._client_left():
                with app.lock:
                    app.abandoned += 1
                self.close_connection = True
                return
        with app.lock:
            app.in_flight += 1
            app.max_in_flight = max(app.max_in_flight, app.in_flight)
        try:
            status, headers, payload, delay = app.handle(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if delay:
                time.sleep(delay)
        finally:  # before the reply goes out: a client thread can only send its next request after it
            with app.lock:
                app.in_flight -= 1
        self._respond(status, headers, payload)

    def _respond(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        if status == _RESET:  # SO_LINGER 0: close() sends a TCP RST instead of a response
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        truncate = headers.pop(_TRUNCATE, None) is not None
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(payload) * (2 if truncate else 1)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass
        if truncate:
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: FakeAPI


Response = tuple[int, dict[str, str], bytes, float]
_RESET = 0  # pseudo status: drop the connection without answering
_TRUNCATE = "x-fake-truncate"  # pseudo header: send half the announced body, then close
_STATUS_KINDS = {
    "408": (408, "timeout_error"),
    "429": (429, "rate_limit_error"),
    "429-bare": (429, "rate_limit_error"),
    "500": (500, "api_error"),
    "502": (502, "api_error"),
    "503": (503, "api_error"),
    "529": (529, "overloaded_error"),
    "400": (400, "invalid_request_error"),
    "401": (401, "authentication_error"),
    "402": (402, "billing_error"),
    "403": (403, "permission_error"),
    "404": (404, "not_found_error"),
}


def _json(status: int, obj: Any, **headers: str) -> Response:
    return status, {"content-type": "application/json", **headers}, json.dumps(obj).encode(), 0.0


class FakeAPI:
    """Common plumbing: the HTTP server thread, the failure plan, request and billing counters."""

    def __init__(
        self,
        plan: Iterable[str] = (),
        retry_after: str = "0.2",
        timeout_delay: float = 2.0,
        reply_delay: float = 0.0,
        rate_limit_per_s: int | None = None,
        request_delay: float = 0.0,
    ):
        self.plan: deque[str] = deque(plan)
        self.retry_after = retry_after
        self.timeout_delay = timeout_delay
        self.reply_delay = reply_delay
        self.rate_limit_per_s = rate_limit_per_s
        self.request_delay = request_delay
        self.abandoned = 0  # POSTs whose client hung up during request_delay: not handled, not billed
        self._served: deque[float] = deque()  # start times of requests served in the last second
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # "METHOD route" -> count, every request received
        self.failures: Counter[str] = Counter()  # plan entries served
        self.billed: list[str] = []  # prompts whose reply was delivered (sync) or returned in a batch
        self.api_keys: set[str] = set()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_failure(self) -> str | None:
        with self.lock:
            step = self.plan.popleft() if self.plan else None
            if not step and self.rate_limit_per_s:
                now = time.monotonic()
                while self._served and now - self._served[0] >= 1.0:
                    self._served.popleft()
                if len(self._served) >= self.rate_limit_per_s:
                    step = "rate-limited"
                else:
                    self._served.append(now)
            if step:
                self.failures[step] += 1
            return step

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        raise NotImplementedError

    def _failure_response(self, step: str) -> Response:
        """The response for a scripted failure, in this API's error envelope."""
        if step == "malformed":
            return 200, {"content-type": "application/json"}, b'{"id": "msg_broken", "content": [', 0.0
        if step == "nonjson":
            return 200, {"content-type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>", 0.0
        if step == "reset":
            return _RESET, {}, b"", 0.0
        if step == "truncated":
            return 200, {"content-type": "application/json", _TRUNCATE: "1"}, b'{"id": "cut", "type": "message", "con', 0.0
        if step == "rate-limited":
            with self.lock:
                wait = max(0.0, 1.0 - (time.monotonic() - self._served[0])) if self._served else 0.0
            return _json(429, self.error_body("rate_limit_error", "rate limited"), **{"retry-after": f"{wait:.3f}"})
        status, kind = _STATUS_KINDS[step]
        extra = {"retry-after": self.retry_after} if step == "429" else {}
        return _json(status, self.error_body(kind, f"scripted {step}"), **extra)

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        raise NotImplementedError


class FakeAnthropic(FakeAPI):
    """``POST /v1/messages`` and the Message Batches endpoints (create, retrieve, results)."""

    def __init__(self, *args: Any, polls_before_end: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.polls_before_end = polls_before_end
        self.batches: dict[str, dict[str, Any]] = {}
        self.submitted: Counter[str] = Counter()  # custom_id -> times submitted in a batch
        self.last_request: dict[str, Any] = {}

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _message(self, model: str, prompt: str, text: str) -> dict[str, Any]:
        return {
            "id": f"msg_{abs(hash(prompt)) % 10**12:012d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": chars_over_4(prompt), "output_tokens": max(1, chars_over_4(text))},
        }

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        path = path.split("?", 1)[0]
        with self.lock:
            # this SDK version sends the key as a bearer token; older ones used x-api-key
            self.api_keys.add(headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer "))
        if method == "POST" and path == "/v1/messages":
            return self._messages(json.loads(body))
        if method == "POST" and path == "/v1/messages/batches":
            return self._create_batch(json.loads(body))
        m = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
        if method == "GET" and m and m.group(1) in self.batches:
            return self._results(m.group(1)) if m.group(2) else self._retrieve(m.group(1))
        return _json(404, self.error_body("not_found_error", f"no route {method} {path}"))

    def _count(self, route: str) -> None:
        with self.lock:
            self.requests[route] += 1

    def _messages(self, req: dict[str, Any]) -> Response:
        self._count("POST /v1/messages")
        with self.lock:
            self.last_request = req
        if "temperature" in req:  # as Claude 5.x models do
            return _json(400, self.error_body("invalid_request_error", "temperature is not supported for this model"))
        prompt = req["messages"][0]["content"]
        step = self.next_failure()
        if step == "timeout":
            status, headers, payload, _ = _json(200, self._message(req["model"], prompt, scripted_reply(prompt)))
            return status, headers, payload, self.timeout_delay
        if step:
            return self._failure_response(step)
        with self.lock:
            self.billed.append(prompt)
        status, headers, payload, _ = _json(200, self._message(req["model"], prompt, scripted_reply(prompt)))
        return status, headers, payload, self.reply_delay

    def _batch_json(self, batch_id: str) -> dict[str, Any]:
        b = self.batches[batch_id]
        ended = b["polls"] >= self.polls_before_end
        n = len(b["requests"])
        counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            counts["processing"] = 0
            for r in b["requests"]:
                counts[self._batch_outcome(r)] += 1
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": "2026-01-01T00:01:00Z" if ended else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    @staticmethod
    def _batch_outcome(request: dict[str, Any]) -> str:
        m = _BATCH_RE.search(request["params"]["messages"][0]["content"])
        return m.group(1) if m else "succeeded"

    def _create_batch(self, req: dict[str, Any]) -> Response:
        self._count("POST /v1/messages/batches")
        with self.lock:
            batch_id = f"msgbatch_{len(self.batches) + 1:04d}"
            self.batches[batch_id] = {"requests": req["requests"], "polls": 0, "results_served": 0}
            self.submitted.update(r["custom_id"] for r in req["requests"])
        return _json(200, self._batch_json(batch_id))

    def _retrieve(self, batch_id: str) -> Response:
        self._count("GET /v1/messages/batches/{id}")
        with self.lock:
            self.batches[batch_id]["polls"] += 1
        return _json(200, self._batch_json(batch_id))

    def _results(self, batch_id: str) -> Response:
        self._count("GET /v1/messages/batches/{id}/results")
        b = self.batches[batch_id]
        lines = []
        with self.lock:
            first_time = b["results_served"] == 0
            b["results_served"] += 1
        for r in b["requests"]:
            prompt = r["params"]["messages"][0]["content"]
            outcome = self._batch_outcome(r)
            if outcome == "succeeded":
                result: dict[str, Any] = {"type": "succeeded", "message": self._message(r["params"]["model"], prompt, scripted_reply(prompt))}
                if first_time:
                    with self.lock:
                        self.billed.append(prompt)
            elif outcome == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "scripted"}}}
            else:
                result = {"type": outcome}
            lines.append(json.dumps({"custom_id": r["custom_id"], "result": result}))
        return 200, {"content-type": "application/binary"}, ("\n".join(lines) + "\n").encode(), 0.0


class FakeOpenAI(FakeAPI):
    """``POST /v1/chat/completions`` of an OpenAI-compatible server."""

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        with self.lock:
            self.api_keys.add(headers.get("authorization", "").removeprefix("Bearer "))
        if not (method == "POST" and path.split("?", 1)[0] == "/v1/chat/completions"):
            return _json(404, self.error_body("not_found", f"no route {method} {path}"))
        with self.lock:
            self.requests["POST /v1/chat/completions"] += 1
        req = json.loads(body)
        prompt = req["messages"][0]["content"]
        text = scripted_reply(prompt)
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1767225600,
            "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
            "usage": {
                "prompt_tokens": chars_over_4(prompt),
                "completion_tokens": max(1, chars_over_4(text)),
                "total_tokens": chars_over_4(prompt) + max(1, chars_over_4(text)),
            },
        }
        step = self.next_failure()
        if step == "timeout":
            status, headers_out, payload, _ = _json(200, completion)
            return status, headers_out, payload, self.timeout_delay
        if step:
            return self._failure_response(step)
        with self.lock:
            self.billed.append(prompt)
        status, headers_out, payload, _ = _json(200, completion)
        return status, headers_out, payload, self.reply_delay
