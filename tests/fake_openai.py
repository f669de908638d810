"""A scripted OpenAI-compatible server on 127.0.0.1 that emits real ``tool_calls`` (streamed as SSE or whole).

Each POST to /v1/chat/completions takes the next scripted reply: ``{"tool_calls": [(name, args), ...]}``
or ``{"content": "text"}``. Every request body is kept in ``requests`` so a test can assert what
the model was sent (tool schemas, tool results, errors). Not a test module (no tests here).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedOpenAI:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is the ``/v1`` base URL."""

    def __init__(self, replies: list[dict[str, Any]], *, model: str = "scripted-model") -> None:
        self.replies = list(replies)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if self.path.rstrip("/").endswith("/models"):
                    self._json({"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "test"}]})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    n = len(server.requests)
                    reply = server.replies[n - 1] if n <= len(server.replies) else None
                if reply is None:
                    self._json({"error": {"message": f"the script has only {len(server.replies)} replies", "type": "test"}}, 500)
                    return
                if body.get("stream"):
                    self._sse(reply, n)
                else:
                    self._json(server._completion(reply, n))

            def _json(self, payload: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, reply: dict[str, Any], n: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in server._chunks(reply, n):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def start(self) -> "ScriptedOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # --- the wire format ---------------------------------------------------------------------
    @staticmethod
    def _calls(reply: dict[str, Any], n: int) -> list[dict[str, Any]]:
        return [{"id": f"call_{n}_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(reply.get("tool_calls") or [])]

    @staticmethod
    def _usage(reply: dict[str, Any]) -> dict[str, int]:
        completion = len(str(reply.get("content", "")).split()) + 5 * len(reply.get("tool_calls") or [])
        return {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion}

    def _completion(self, reply: dict[str, Any], n: int) -> dict[str, Any]:
        calls = self._calls(reply, n)
        message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
        if calls:
            message["tool_calls"] = calls
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": self._usage(reply)}

    def _chunks(self, reply: dict[str, Any], n: int) -> list[dict[str, Any]]:
        base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model}
        out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        for i, call in enumerate(self._calls(reply, n)):
            args = call["function"]["arguments"]
            half = len(args) // 2  # arguments arrive in pieces, as real servers send them
            out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": args[:half]}}]},
                "finish_reason": None}]})
            out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": args[half:]}}]}, "finish_reason": None}]})
        for word in str(reply.get("content") or "").split(" ") if reply.get("content") else []:
            out.append({**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]})
        out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if reply.get("tool_calls") else "stop"}]})
        out.append({**base, "choices": [], "usage": self._usage(reply)})
        return out
