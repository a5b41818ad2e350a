"""An OpenAI-compatible chat-completions server on 127.0.0.1 that each test scripts.

litellm reaches it through its ordinary openai client (`openai/<model>` with api_base), so the
tests exercise real HTTP, real litellm parsing and real retry behaviour. A script is a list
of replies; each reply is either a completion (content and/or tool calls, usage) or an HTTP
error (status, headers, and optionally the provider's exact error object, as OpenAI's
`{"message", "type", "param", "code"}`). Every request body is kept for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    prompt_tokens: int = 100
    completion_tokens: int = 20
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    # The error object to send as is (`{"error": body}`) instead of the generated one.
    body: dict[str, Any] | None = None


def call(name: str, arguments: dict[str, Any] | str | None = None) -> Reply:
    return Reply(tool_calls=[(name, arguments if arguments is not None else {})])


def error(status: int, message: str = "scripted error", **headers: str) -> Reply:
    return Reply(status=status, headers=headers, error=message)


def provider_error(status: int, message: str, *, type: str = "invalid_request_error",
                   code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
    """An error reply with the body a provider sends (OpenAI's error object)."""
    body = {"message": message, "type": type, "param": param, "code": code}
    return Reply(status=status, headers=dict(headers or {}), error=message, body=body)


class ScriptedServer:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, headers, payload = server._answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.requests.append(body)
            if not path.endswith("/chat/completions"):
                return 404, {}, {"error": {"message": f"no route {path}"}}
            if not self.replies:
                return 500, {}, {"error": {"message": "test server: script exhausted",
                                           "type": "server_error"}}
            reply = self.replies.pop(0)
            self._counter += 1
            n = self._counter
        if reply.status != 200 and reply.body is not None:
            return reply.status, reply.headers, {"error": reply.body}
        if reply.status != 200:
            return reply.status, reply.headers, {
                "error": {"message": reply.error, "type": "rate_limit_error"
                          if reply.status == 429 else "server_error", "code": reply.status}}
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{n}_{i}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str)
                              else json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)
            ]
        return 200, {}, {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": reply.prompt_tokens,
                      "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer().start()
    try:
        yield server
    finally:
        server.stop()
