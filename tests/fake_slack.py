"""A fake Slack for tests: a Web API server on 127.0.0.1 that records calls, and a signed-event sender.

The server answers the methods the ShopSight app uses (auth.test, chat.postMessage,
chat.update, chat.postEphemeral, and the three steps of files_upload_v2) the way Slack
documents them, and can be told to fail the next call to a method (e.g. 429 with Retry-After).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

BOT_USER_ID = "UBOT"
TEAM_ID = "T1"


@dataclass
class ApiCall:
    """One request the fake Slack received: the method, its parameters, and what it answered."""

    method: str
    params: dict[str, Any]
    status: int
    response: dict[str, Any]
    token: str | None = None


@dataclass
class _Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "ratelimited"


class FakeSlack:
    """A Slack Web API on 127.0.0.1:<free port>; ``api_url`` goes into ``SlackSettings.api_url``."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []
        self.socket_mode: FakeSocketMode | None = None
        self.uploads: dict[str, bytes] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._files = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path)
                if path.path.startswith("/upload/"):
                    file_id = path.path.rsplit("/", 1)[1]
                    with fake._lock:
                        fake.uploads[file_id] = raw
                    self._send(200, f"OK - {len(raw)}".encode(), {"Content-Type": "text/plain"})
                    return
                method = path.path.removeprefix("/api/")
                params: dict[str, Any] = dict(parse_qsl(path.query))
                if "json" in (self.headers.get("Content-Type") or ""):
                    params.update(json.loads(raw or b"{}"))
                else:
                    params.update(parse_qsl(raw.decode()))
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ") or params.get("token")
                status, headers, body = fake._respond(method, params, token)
                with fake._lock:
                    fake.calls.append(ApiCall(method=method, params=params, status=status, response=body, token=token))
                self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return f"{self.root}/api/"

    def start(self) -> "FakeSlack":
        self._thread.start()
        return self

    def open_socket_mode(self) -> "FakeSocketMode":
        """Serve Socket Mode too: apps.connections.open will hand out this server's ws:// URL."""
        self.socket_mode = FakeSocketMode()
        return self.socket_mode

    def stop(self) -> None:
        if self.socket_mode is not None:
            self.socket_mode.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- behaviour -------------------------------------------------------------------------
    def fail_next(self, method: str, status: int = 429, *, retry_after: int | None = 0, error: str = "ratelimited") -> None:
        """Make the next call to ``method`` fail with ``status`` (429 carries ``Retry-After``)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(status, headers, error))

    def _respond(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, dict[str, str], dict]:
        with self._lock:
            pending = self._failures.get(method)
            failure = pending.pop(0) if pending else None
        if failure is not None:
            return failure.status, failure.headers, {"ok": False, "error": failure.error}
        if method == "apps.connections.open":
            if not (token or "").startswith("xapp-") or self.socket_mode is None:
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            return 200, {}, {"ok": True, "url": self.socket_mode.url}
        if not token or not token.startswith("xoxb-"):
            return 200, {}, {"ok": False, "error": "not_authed"}
        if method == "auth.test":
            return 200, {}, {"ok": True, "url": "https://test.slack.com/", "team": "Test", "user": "shopsight",
                             "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": "BBOT"}
        if method == "chat.postMessage":
            ts = f"{1700000000 + next(self._ts)}.000100"
            return 200, {}, {"ok": True, "channel": params["channel"], "ts": ts,
                             "message": {"text": params.get("text"), "ts": ts}}
        if method == "chat.update":
            return 200, {}, {"ok": True, "channel": params["channel"], "ts": params["ts"], "text": params.get("text")}
        if method == "chat.postEphemeral":
            return 200, {}, {"ok": True, "message_ts": f"{1700000000 + next(self._ts)}.000200"}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._files):04d}"
            return 200, {}, {"ok": True, "upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = json.loads(params["files"])
            return 200, {}, {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}
        return 200, {}, {"ok": False, "error": "unknown_method"}

    # -- inspection ------------------------------------------------------------------------
    def calls_to(self, method: str, *, ok_only: bool = True) -> list[dict[str, Any]]:
        """Parameters of the calls to ``method`` (only the ones answered ``ok`` unless ``ok_only=False``)."""
        with self._lock:
            return [c.params for c in self.calls if c.method == method and (c.response.get("ok") or not ok_only)]

    def posted_threads(self) -> dict[str, tuple[str, str | None]]:
        """Each message the app posted, by the ts Slack gave it → (channel, thread_ts it was posted in)."""
        with self._lock:
            return {
                c.response["ts"]: (c.params["channel"], c.params.get("thread_ts"))
                for c in self.calls
                if c.method == "chat.postMessage" and c.response.get("ok")
            }

    def statuses(self, method: str) -> list[int]:
        with self._lock:
            return [c.status for c in self.calls if c.method == method]

    def wait_for(self, condition: Callable[["FakeSlack"], bool], timeout: float = 15.0) -> None:
        """Poll until ``condition(self)`` holds; fail with what was received when it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return
            time.sleep(0.02)
        with self._lock:
            seen = [(c.method, c.status) for c in self.calls]
        raise AssertionError(f"fake Slack never saw the expected calls within {timeout}s; it saw {seen}")


# -- Socket Mode: a WebSocket server that pushes event envelopes ---------------------------------

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server-to-client WebSocket frame (final, unmasked)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("socket closed")
        data += chunk
    return data


def _read_ws_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One client-to-server frame (clients always mask): (opcode, payload)."""
    b0, b1 = _recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    mask = _recv_exact(sock, 4) if b1 & 0x80 else b"\0\0\0\0"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(_recv_exact(sock, n)))
    return b0 & 0x0F, payload


class FakeSocketMode:
    """Slack's Socket Mode endpoint on ws://127.0.0.1: says hello, pushes envelopes, records acks."""

    def __init__(self) -> None:
        self.acks: list[str] = []
        self._conn: socket.socket | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._listener.getsockname()[1]}/link/?ticket=t1"

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return  # closed before anyone connected
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return  # the client gave up before its handshake
            request += chunk
        key = next(line.split(":", 1)[1].strip() for line in request.decode().split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        self._send(conn, {"type": "hello", "num_connections": 1, "debug_info": {"host": "fake"}})
        self._conn = conn
        self._connected.set()
        try:
            while True:
                opcode, payload = _read_ws_frame(conn)
                if opcode == 0x9:  # ping -> pong
                    with self._lock:
                        conn.sendall(_ws_frame(0xA, payload))
                elif opcode == 0x1:
                    envelope_id = json.loads(payload).get("envelope_id")
                    if envelope_id:
                        with self._lock:
                            self.acks.append(envelope_id)
                elif opcode == 0x8:
                    return
        except (ConnectionError, OSError):
            return

    def _send(self, conn: socket.socket, message: dict[str, Any]) -> None:
        with self._lock:
            conn.sendall(_ws_frame(0x1, json.dumps(message).encode()))

    def push_event(self, payload: dict[str, Any], *, envelope_id: str, retry_attempt: int = 0) -> None:
        """Send an Events API payload over the socket, as Slack does (waits for the app to connect)."""
        if not self._connected.wait(timeout=10):
            raise AssertionError("the app never connected to the fake Socket Mode server")
        assert self._conn is not None
        self._send(self._conn, {
            "envelope_id": envelope_id, "type": "events_api", "payload": payload,
            "accepts_response_payload": False, "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        })

    def stop(self) -> None:
        self._listener.close()
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass


# -- the Slack side of the Events API ---------------------------------------------------------


def sign(secret: str, timestamp: str, body: str) -> str:
    """Slack's request signature: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


def post_event(
    url: str,
    secret: str,
    payload: dict[str, Any],
    *,
    timestamp: int | None = None,
    signature: str | None = None,
    retry_num: int | None = None,
) -> tuple[int, str]:
    """POST ``payload`` to the app as Slack does (signed, optionally as a retry); returns (status, body)."""
    body = json.dumps(payload)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature or sign(secret, ts, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return _post(url, body, headers)



def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    """POST ``body`` to the app as Slack would; (status, response text), an HTTP error's too."""
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_event_ids = itertools.count(1)


def message_event(
    text: str,
    *,
    ts: str,
    channel: str = "C1",
    user: str = "U1",
    thread_ts: str | None = None,
    kind: str = "app_mention",
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An Events API ``event_callback`` envelope for an app_mention (or a ``message`` with ``kind``)."""
    event: dict[str, Any] = {"type": kind, "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts,
                             "team": TEAM_ID, **extra}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "token": "legacy-unused",
        "team_id": TEAM_ID,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):06d}",
        "event_time": int(float(ts)),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def post_interaction(url: str, secret: str, payload: dict[str, Any], *, timestamp: int | None = None) -> tuple[int, str]:
    """POST an interactivity payload (a button click) as Slack does: form-encoded ``payload=<json>``, signed."""
    from urllib.parse import urlencode

    body = urlencode({"payload": json.dumps(payload)})
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
               "X-Slack-Signature": sign(secret, ts, body)}
    return _post(url, body, headers)


def block_action(action_id: str, value: str, *, user: str = "U1", channel: str = "C_ALERTS", message: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``block_actions`` payload: ``user`` clicked the button ``action_id`` (carrying ``value``) on ``message``."""
    return {
        "type": "block_actions", "team": {"id": TEAM_ID}, "user": {"id": user, "team_id": TEAM_ID}, "api_app_id": "A1",
        "token": "legacy-unused", "trigger_id": "1.2.3", "channel": {"id": channel}, "container": {"type": "message"},
        "message": message or {"ts": "1700000001.000100", "text": "alert", "blocks": []},
        "actions": [{"action_id": action_id, "block_id": "risk_label", "value": value, "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }
