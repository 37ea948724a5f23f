"""The HTTP side of ``assistant-axis serve``: OpenAI routes, the chat page, health and metrics.

Why the standard library: a threading HTTP server with chunked server-sent events is all an
OpenAI-compatible chat endpoint needs, and it runs the same with vLLM or the HF fallback, with
no web framework to pin. Each connection has its own thread, which only validates, renders the
prompt, hands the request to the engine loop (:mod:`.engine`) and relays its events; while it
waits it watches its socket, so a client that goes away has its request aborted in the engine.
The API key (``--api-key``) is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .engine import Backend, Event, GenRequest
from .metrics import Metrics
from .protocol import APIError, chunk, completion, completion_id, parse_chat, parse_json, too_long
from .setup import AUTO, OFF, ServeSetup

log = logging.getLogger(__name__)

MAX_BODY = 4 * 2**20
OPEN_PATHS = {"/", "/index.html", "/health"}  # the page itself holds no data; liveness probes carry no key


def page() -> bytes:
    return resources.files("assistant_axis.serve").joinpath("static/index.html").read_bytes()


class ServerState:
    """What every handler thread shares."""

    def __init__(self, setup: ServeSetup, backend: Backend, api_key: str | None) -> None:
        self.setup = setup
        self.backend = backend
        self.api_key = api_key
        self.metrics = Metrics()
        self.render_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self.started = time.time()

    def render(self, messages: list[dict[str, str]], auto: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Prompt token ids (the engine's own rendering) and, for auto capping, the earlier assistant turns' spans."""
        from ..conversation import encode_conversation, format_conversation

        tok = self.backend.tokenizer
        with self.render_lock:
            if auto:
                enc = encode_conversation(tok, messages, add_generation_prompt=True)
                spans = [s for m, s in zip(enc.messages, enc.spans) if m["role"] == "assistant" and s is not None]
                return list(enc.input_ids), spans
            text = format_conversation(tok, messages, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"]), []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "assistant-axis"
    state: ServerState  # set on the subclass made by make_server

    # ---- plumbing ----
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)  # the request line only; headers (and keys) are never logged

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, exc: APIError) -> None:
        self._json(exc.status, exc.body())

    def _authorized(self) -> bool:
        key = self.state.api_key
        if not key or self.path.split("?")[0] in OPEN_PATHS:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else self.headers.get("X-API-Key", "")
        return hmac.compare_digest(token.encode(), key.encode())

    def _client_gone(self) -> bool:
        """True when the client closed its side (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?")[0]
        try:
            if not self._authorized():
                raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>' with the key the "
                               "server was started with (--api-key)", code="invalid_api_key", kind="authentication_error")
            route = ROUTES.get((method, path))
            if route is None:
                if any(p == path for _, p in ROUTES):
                    raise APIError(405, f"{method} is not allowed on {path}", code="method_not_allowed")
                raise APIError(404, f"no route {method} {path}; see /v1/chat/completions, /v1/models, /health, /metrics",
                               code="not_found")
            route(self)
        except APIError as exc:
            if exc.status >= 400 and path == "/v1/chat/completions":
                self.state.metrics.request("-", f"error_{exc.status}")
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise APIError(400, "bad Content-Length header", code="invalid_request") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise APIError(413, f"the request body has {length} bytes; the limit is {MAX_BODY}", code="body_too_large")
        return self.rfile.read(length) if length else b""

    # ---- routes ----
    def index(self) -> None:
        self._send(200, page(), "text/html; charset=utf-8")

    def health(self) -> None:
        ok = not self.state.backend.dead
        self._json(200 if ok else 503, {"status": "ok" if ok else "engine stopped", "engine": self.state.backend.name})

    def models(self) -> None:
        setup = self.state.setup
        self._json(200, {"object": "list", "data": [{
            "id": setup.model_id, "object": "model", "created": int(self.state.started), "owned_by": "assistant-axis",
            "engine": self.state.backend.name, "max_model_len": self.state.backend.max_model_len, "axis": setup.describe(),
        }]})

    def metrics(self) -> None:
        backend = self.state.backend
        text = self.state.metrics.render(backend.running, backend.max_running).encode()
        self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def chat(self) -> None:
        st = self.state
        body = parse_json(self._body())
        if st.backend.dead:
            raise APIError(503, "the engine stopped; restart the server", code="engine_stopped", kind="server_error")
        limit = st.backend.max_model_len
        req = parse_chat(body, st.setup, limit)
        ids, spans = st.render(req.messages, req.capping == AUTO)
        explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
        max_tokens = req.max_tokens if explicit else min(req.max_tokens, limit - len(ids))
        if len(ids) + max_tokens > limit or max_tokens < 1:
            raise too_long(len(ids), req.max_tokens, limit)
        experiment = None if req.capping in (OFF, AUTO) else req.capping
        gen = GenRequest(ids, max_tokens, req.temperature, req.top_p, req.seed, experiment,
                         auto=req.capping == AUTO, auto_experiment=st.setup.default_experiment,
                         projections=req.return_projections, turn_spans=spans)
        start = time.perf_counter()
        handle = st.backend.submit(gen)
        cid = completion_id()
        mode = "auto" if gen.auto else ("on" if experiment else "off")
        if req.stream:
            self._stream(handle, cid, req, mode, start, len(ids))
        else:
            self._complete(handle, cid, mode, start, len(ids))

    def _events(self, handle: Any) -> Iterator[Event]:
        while True:
            try:
                event = handle.events.get(timeout=0.2)
            except queue.Empty:
                if self._client_gone():
                    self.state.backend.cancel(handle)
                    self.state.metrics.request("-", "cancelled")
                    self.close_connection = True
                    return
                continue
            yield event
            if event.kind in ("done", "error"):
                return

    def _record(self, mode: str, info: dict[str, Any], start: float, ttft: float | None, n_prompt: int) -> None:
        self.state.metrics.finished(mode, n_prompt, info["n_tokens"], time.perf_counter() - start, ttft,
                                    info.get("projections") or [], bool(info.get("capping_triggered")))

    def _complete(self, handle: Any, cid: str, mode: str, start: float, n_prompt: int) -> None:
        text, ttft = [], None
        for event in self._events(handle):
            if event.kind == "tokens":
                ttft = ttft if ttft is not None else time.perf_counter() - start
                text.append(event.text)
            elif event.kind == "error":
                raise APIError(503, event.info.get("message", "engine error"), code="engine_error", kind="server_error")
            else:
                self._record(mode, event.info, start, ttft, n_prompt)
                self._json(200, completion(cid, self.state.setup.model_id, "".join(text), event.info, n_prompt,
                                           event.info["n_tokens"]))

    def _write_chunk(self, obj: Any) -> None:
        data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, handle: Any, cid: str, req: Any, mode: str, start: float, n_prompt: int) -> None:
        model = self.state.setup.model_id
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ttft, offset, total = None, 0, 0.0
        try:
            self._write_chunk(chunk(cid, model, {"role": "assistant", "content": ""}))
            for event in self._events(handle):
                if event.kind == "tokens":
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    axis = None
                    if req.return_projections:
                        total += sum(event.projections)
                        offset += len(event.projections)
                        axis = {"projections": event.projections, "offset": offset - len(event.projections),
                                "turn_mean": total / offset if offset else None}
                    if event.text or axis is not None:
                        self._write_chunk(chunk(cid, model, {"content": event.text}, axis=axis))
                elif event.kind == "error":
                    self._write_chunk({"error": {"message": event.info.get("message"), "type": "server_error",
                                                 "param": None, "code": "engine_error"}})
                    break
                else:
                    info = event.info
                    self._record(mode, info, start, ttft, n_prompt)
                    self._write_chunk(chunk(cid, model, {}, finish=info["finish_reason"], axis=info))
                    if req.include_usage:
                        usage = {"prompt_tokens": n_prompt, "completion_tokens": info["n_tokens"],
                                 "total_tokens": n_prompt + info["n_tokens"]}
                        out = chunk(cid, model, {}, usage=usage)
                        out["choices"] = []
                        self._write_chunk(out)
            else:
                if self.close_connection:  # the client went away
                    return
            self._write_chunk(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client went away (broken pipe, reset)
            self.state.backend.cancel(handle)
            self.state.metrics.request(mode, "cancelled")
            self.close_connection = True


ROUTES = {
    ("GET", "/"): Handler.index,
    ("GET", "/index.html"): Handler.index,
    ("GET", "/health"): Handler.health,
    ("GET", "/v1/models"): Handler.models,
    ("GET", "/metrics"): Handler.metrics,
    ("POST", "/v1/chat/completions"): Handler.chat,
}


class Server(ThreadingHTTPServer):
    """Threading server that does not print a traceback when a keep-alive client hangs up."""

    daemon_threads = True
    request_queue_size = 256  # many clients connect at once (the default backlog of 5 drops some)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(setup: ServeSetup, backend: Backend, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None) -> Server:
    """The HTTP server (not yet serving); ``backend.on_finish`` is left to the caller."""
    state = ServerState(setup, backend, api_key)
    handler = type("BoundHandler", (Handler,), {"state": state})
    return Server((host, port), handler)
