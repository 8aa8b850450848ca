"""A fake Anthropic Messages API on 127.0.0.1, for tests: no network, no real key.

A real HTTP/1.1 server (the standard library's, one thread per connection) on a free port of
127.0.0.1, in a background thread. It speaks enough of `POST /v1/messages` for the
`anthropic` SDK (sync and async clients), records every request it receives, and answers
from a script the test queues.

    from messages_api import FakeMessagesAPI

    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)      # or anthropic.Anthropic(base_url=api.url)
        api.answer_text("a red fox runs left", input_tokens=412, output_tokens=96)
        api.answer_error(429, retry_after=0.001, times=3)
        ...
        api.requests[0]["json"]["model"], FakeMessagesAPI.key_of(api.requests[0])

Answers are used first in, first out, one per request to /v1/messages (every `times=N`
queues N copies). With the queue empty the server answers `default_text` (settable) as a
plain text message, so a test that queues too few errors sees a success, not a hang.

- `answer_text(text, input_tokens=10, output_tokens=5, stop_reason="end_turn")`: a proper
  Messages response: id, type "message", role "assistant", model (echoes the request's),
  content [{"type": "text", "text": ...}], stop_reason, stop_sequence, usage.
- `answer_tool(name, input, text=None, ...)`: content [{"type": "tool_use", "id", "name",
  "input"}], preceded by a text block when `text` is given; stop_reason "tool_use".
- `answer_content(blocks, stop_reason="end_turn", ...)`: any content list, e.g. `[]`
  (an empty answer) or a thinking block alone.
- `answer_error(status, message="...", retry_after=None, error_type=None)`: Anthropic's
  error shape `{"type": "error", "error": {"type", "message"}, "request_id"}` with that
  HTTP status (the error type follows the status unless given). `retry_after` (seconds,
  may be fractional) sends both `retry-after` and `retry-after-ms`, so the SDK's retries
  wait that long instead of its own backoff (0.5 s, 1 s, ...).
- `answer_delay(seconds, then_text="late")`: waits, then answers text (for timeouts; the
  wait ends early when the server closes, so a test never waits out a long delay).
- `answer_raw(status, body: bytes, content_type="application/json", headers=None)`:
  exactly these bytes (a malformed body, HTML from a proxy, ...).

`requests` holds one dict per request received (any path, in arrival order):
`{"method", "path", "headers": {lower-case name: value}, "body": bytes, "json": parsed body
or None}`. `messages_requests()` is the same, only for POST /v1/messages. `key_of(request)`
is the credential a request carried: the `x-api-key` header, else the token of
`authorization: Bearer ...` (anthropic 2.16 sends an API key that way). A path other than
/v1/messages answers 404 in the error shape and takes nothing from the queue.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MESSAGES_PATH = "/v1/messages"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class _Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    message: dict[str, Any] | None = None     # a Messages response; its "model" is filled from the request


class FakeMessagesAPI:
    """The fake server; a context manager (`start()` / `close()` by hand also work)."""

    def __init__(self, default_text: str = "a fake enhanced prompt") -> None:
        self.default_text = default_text
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._queue: deque[_Answer] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> "FakeMessagesAPI":
        handler = type("Handler", (_Handler,), {"api": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-messages-api", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeMessagesAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the script --------------------------------------------------------------------------------
    def answer_text(self, text: str, input_tokens: int = 10, output_tokens: int = 5,
                    stop_reason: str = "end_turn", times: int = 1) -> None:
        self.answer_content([{"type": "text", "text": text}], stop_reason=stop_reason,
                            input_tokens=input_tokens, output_tokens=output_tokens, times=times)

    def answer_tool(self, name: str, input: dict[str, Any], text: str | None = None,
                    input_tokens: int = 10, output_tokens: int = 5, times: int = 1) -> None:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
        blocks.append({"type": "tool_use", "id": "toolu_fake", "name": name, "input": input})
        self.answer_content(blocks, stop_reason="tool_use", input_tokens=input_tokens,
                            output_tokens=output_tokens, times=times)

    def answer_content(self, blocks: list[dict[str, Any]], stop_reason: str = "end_turn",
                       input_tokens: int = 10, output_tokens: int = 5, times: int = 1) -> None:
        for _ in range(times):
            self._push(_Answer(message=_message(blocks, stop_reason, input_tokens, output_tokens)))

    def answer_error(self, status: int, message: str = "fake API error", retry_after: float | None = None,
                     error_type: str | None = None, times: int = 1) -> None:
        kind = error_type or ERROR_TYPES.get(status, "api_error")
        headers = {}
        if retry_after is not None:
            headers = {"retry-after": f"{retry_after:g}", "retry-after-ms": f"{retry_after * 1000:g}"}
        for _ in range(times):
            body = json.dumps({"type": "error", "error": {"type": kind, "message": message},
                               "request_id": f"req_fake_{next(self._ids):04d}"}).encode()
            self._push(_Answer(status=status, body=body, headers=dict(headers)))

    def answer_delay(self, seconds: float, then_text: str = "a late answer", times: int = 1) -> None:
        for _ in range(times):
            self._push(_Answer(delay_s=seconds, message=_message([{"type": "text", "text": then_text}],
                                                                 "end_turn", 10, 5)))

    def answer_raw(self, status: int, body: bytes, content_type: str = "application/json",
                   headers: dict[str, str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self._push(_Answer(status=status, body=body, content_type=content_type, headers=dict(headers or {})))

    def pending(self) -> int:
        """How many queued answers are still unused."""
        with self._lock:
            return len(self._queue)

    def messages_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == MESSAGES_PATH]

    @staticmethod
    def key_of(request: dict[str, Any]) -> str | None:
        """The credential a recorded request carried (x-api-key, else an Authorization bearer)."""
        headers = request["headers"]
        if "x-api-key" in headers:
            return headers["x-api-key"]
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    def _push(self, answer: _Answer) -> None:
        with self._lock:
            self._queue.append(answer)

    def _next(self) -> _Answer:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return _Answer(message=_message([{"type": "text", "text": self.default_text}], "end_turn", 10, 5))

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)


def _message(blocks: list[dict[str, Any]], stop_reason: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": blocks, "stop_reason": stop_reason,
            "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


class _Handler(BaseHTTPRequestHandler):
    api: FakeMessagesAPI
    protocol_version = "HTTP/1.1"          # keep-alive, as the SDK's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:     # quiet: no stderr per request
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        path = self.path.split("?", 1)[0]
        self.api._record({"method": self.command, "path": path,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body, "json": parsed})
        if self.command != "POST" or path != MESSAGES_PATH:
            error = {"type": "error", "error": {"type": "not_found_error", "message": f"no route {self.command} {path}"}}
            self._send(404, json.dumps(error).encode(), "application/json", {})
            return
        answer = self.api._next()
        if answer.delay_s and self.api._closing.wait(answer.delay_s):
            return                                   # the server is closing: no answer
        if answer.message is not None:
            message = dict(answer.message, id=f"msg_fake_{next(self.api._ids):04d}",
                           model=(parsed or {}).get("model", "fake-model") if isinstance(parsed, dict) else "fake-model")
            self._send(200, json.dumps(message).encode(), "application/json", answer.headers)
        else:
            self._send(answer.status, answer.body, answer.content_type, answer.headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.send_header("request-id", f"req_fake_{next(self.api._ids):04d}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):     # the client gave up (a timeout)
            self.close_connection = True

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle
    do_DELETE = _handle
