"""The Slack HTTP endpoint under hostile or broken clients (issue 16, items 3 and 4).

A real EventsServer on 127.0.0.1 and the fake Slack Web API: unsigned garbage is refused
before anything parses it, signed garbage is a 400 with one log line, oversized bodies and
questions are refused before they cost anything, and slow or excess connections cannot
hold the bot. Everything runs over real sockets; the waits are bounded polls, not sleeps
that a slow machine could outrun.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
from fake_slack import BOT_USER_ID, FakeSlack, message_event, post_event, sign

from shopsight.agent.types import Answer
from shopsight.integrations.slack import (
    MAX_QUESTION_CHARS,
    MAX_REQUEST_BYTES,
    EventsServer,
    SlackSettings,
    create_app,
    too_long_text,
)

SECRET = "test-signing-secret"


@dataclass
class RecordingAgent:
    """The agent as the Slack app sees it: records every question it is asked."""

    asked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, question: str, *, conversation_id: str) -> Answer:
        with self.lock:
            self.asked.append(question)
        return Answer(question=question, answer=f"answer to: {question[:40]}", conversation_id=conversation_id)


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def serve(fake_slack: FakeSlack) -> Iterator[Callable[..., EventsServer]]:
    """Start the Bolt app behind an EventsServer with the given limits; stopped afterwards."""
    servers: list[EventsServer] = []

    def start(agent: RecordingAgent, *, workers: int = 4, allowed_users: list[str] | None = None, **limits: Any) -> EventsServer:
        settings = SlackSettings(
            bot_token="xoxb-test-token", app_token=None, signing_secret=SECRET, allowed_channels=[],
            allowed_users=allowed_users or [], workers=workers, max_charts=0, api_url=fake_slack.api_url,
            max_question_chars=MAX_QUESTION_CHARS,
        )
        server = EventsServer(create_app(settings, agent, mode="http"), host="127.0.0.1", port=0, **limits).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def post_raw(
    url: str, body: bytes, *, secret: str | None = SECRET, timestamp: str | None = None,
    content_type: str = "application/json", signature: str | None = None,
) -> tuple[int, str]:
    """POST ``body`` as it is (signed with ``secret`` unless None or a ``signature`` is given)."""
    ts = timestamp if timestamp is not None else str(int(time.time()))
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts}
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    elif secret is not None:
        headers["X-Slack-Signature"] = sign_bytes(secret, ts, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sign_bytes(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's signature over the raw bytes (``fake_slack.sign`` takes text; some bodies here are not UTF-8)."""
    return "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


def wait_until(condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a generous bound, not a benchmark)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def _ts(n: int = 1) -> str:
    return f"{int(time.time()) - 100 + n}.{n:06d}"


def _mention(text: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return message_event(f"<@{BOT_USER_ID}> {text}", ts=_ts(n), **extra)


def _event_null() -> bytes:
    return json.dumps({"type": "event_callback", "event": None, "event_id": "Ev1", "team_id": "T1"}).encode()


MALFORMED = {
    "bad JSON": (b'{"type": "event_callback", "event": {', "application/json"),
    "a JSON array": (b'[{"type": "event_callback"}]', "application/json"),
    "bad UTF-8": (b'{"type": "event_callback", "text": "\xff\xfe"}', "application/json"),
    "form garbage": (b"payload=%7B%7B%7Bnot-json", "application/x-www-form-urlencoded"),
    "event null": (_event_null(), "application/json"),
    "event a list": (json.dumps({"type": "event_callback", "event": [1], "event_id": "Ev2"}).encode(), "application/json"),
    "authorizations a string": (
        json.dumps({"type": "event_callback", "event": {"type": "app_mention"}, "authorizations": "x"}).encode(), "application/json"),
}


def _spy_on_body_parsing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call of Bolt's body parser (the endpoint's and BoltRequest's): proof of "no parsing"."""
    import slack_bolt.request.internals as internals
    import slack_bolt.request.request as bolt_request

    calls: list[str] = []
    real = internals.parse_body

    def spy(body: str, content_type: str | None) -> dict[str, Any]:
        calls.append(body[:20])
        return real(body, content_type)

    monkeypatch.setattr(internals, "parse_body", spy)
    monkeypatch.setattr(bolt_request, "parse_body", spy)
    return calls


def _problems(records: list[logging.LogRecord]) -> list[str]:
    """Log records that carry a traceback or an error: none may come from a client's bad request."""
    return [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR]


# -- authentication before parsing -----------------------------------------------------------


@pytest.mark.parametrize("name", [*MALFORMED, "timestamp abc", "no signature", "non-ASCII signature"])
def test_unsigned_malformed_requests_get_401_before_any_parsing_and_no_traceback(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    agent = RecordingAgent()
    server = serve(agent)
    parsed = _spy_on_body_parsing(monkeypatch)
    body, content_type = MALFORMED.get(name, (json.dumps(_mention("hi")).encode(), "application/json"))

    with caplog.at_level(logging.DEBUG):
        if name == "timestamp abc":  # correctly signed, but over a timestamp that is no time
            status, _ = post_raw(server.url, body, timestamp="abc", signature=sign(SECRET, "abc", body.decode()))
        elif name == "no signature":
            status, _ = post_raw(server.url, body, secret=None)
        elif name == "non-ASCII signature":
            status, _ = post_raw(server.url, body, signature="v0=\u00e9t\u00e9")
        else:
            status, _ = post_raw(server.url, body, content_type=content_type, secret="some-other-secret")

    assert status == 401
    assert parsed == []  # the body was never parsed
    assert _problems(caplog.records) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "shopsight.integrations.slack" and r.levelno >= logging.INFO]
    assert len(lines) == 1 and "401" in lines[0] and "\n" not in lines[0]
    assert agent.asked == [] and fake_slack.calls_to("chat.postMessage") == []


@pytest.mark.parametrize("name", list(MALFORMED))
def test_signed_malformed_bodies_get_400_with_one_log_line(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, name: str,
) -> None:
    agent = RecordingAgent()
    server = serve(agent)
    body, content_type = MALFORMED[name]

    with caplog.at_level(logging.DEBUG):
        status, _ = post_raw(server.url, body, content_type=content_type)

    assert status == 400
    assert _problems(caplog.records) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "shopsight.integrations.slack" and r.levelno >= logging.INFO]
    assert len(lines) == 1 and "400" in lines[0] and "\n" not in lines[0]
    assert agent.asked == [] and fake_slack.calls_to("chat.postMessage") == []


@pytest.mark.parametrize("missing", ["channel", "user"])
def test_an_event_without_a_channel_or_user_is_dropped_with_a_log_line(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, missing: str,
) -> None:
    agent = RecordingAgent()
    # One worker answers events in order, so once the marker is answered the first event was handled;
    # a user list makes the refusal path (an ephemeral note) reachable too: it must not fire either.
    server = serve(agent, workers=1, allowed_users=["U1"])
    event = _mention("churn of u7?", n=1)
    del event["event"][missing]

    with caplog.at_level(logging.INFO, logger="shopsight.integrations.slack"):
        assert post_event(server.url, SECRET, event)[0] == 200
        assert post_event(server.url, SECRET, _mention("marker", n=2))[0] == 200
        fake_slack.wait_for(lambda f: f.calls_to("chat.update"))

    assert agent.asked == ["marker"]
    sent = [c.params.get("channel") for c in fake_slack.calls if c.method.startswith("chat.")]
    assert "None" not in sent and fake_slack.calls_to("chat.postEphemeral") == []
    dropped = [r.getMessage() for r in caplog.records if "dropped event" in r.getMessage()]
    assert len(dropped) == 1 and missing in dropped[0] and event["event_id"] in dropped[0]


# -- bounded work ------------------------------------------------------------------------------


def _send_head(server: EventsServer, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head)
    return sock


def test_a_body_over_the_size_limit_is_refused_from_content_length_before_it_is_read(
    serve: Callable[..., EventsServer],
) -> None:
    # A read timeout far longer than the client waits: a server reading the body would not answer in time.
    server = serve(RecordingAgent(), read_timeout_s=60)
    head = (
        f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0=00\r\n"
        f"Content-Length: {2 * MAX_REQUEST_BYTES}\r\n\r\n"
    ).encode()
    with _send_head(server, head) as sock:  # headers only: the 2 MiB body is never sent
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.0 413")


def test_a_two_million_character_signed_message_is_refused_and_the_bot_stays_responsive(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack,
) -> None:
    agent = RecordingAgent()
    server = serve(agent)
    huge = _mention("x" * 2_000_000, n=1)

    assert post_event(server.url, SECRET, huge)[0] == 413
    assert post_event(server.url, SECRET, _mention("churn of u7?", n=2))[0] == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert agent.asked == ["churn of u7?"]


def test_a_question_over_the_length_limit_gets_a_polite_reply_and_never_reaches_the_agent(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack,
) -> None:
    agent = RecordingAgent()
    server = serve(agent)
    question = "why " * (MAX_QUESTION_CHARS // 4 + 10)
    event = _mention(question, n=1)

    assert post_event(server.url, SECRET, event)[0] == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.postMessage"))

    (reply,) = fake_slack.calls_to("chat.postMessage")
    assert reply["text"] == too_long_text(len(question.strip()), MAX_QUESTION_CHARS)
    assert reply["thread_ts"] == event["event"]["ts"] and reply["channel"] == "C1"
    assert f"{MAX_QUESTION_CHARS:,}" in reply["text"]
    assert agent.asked == [] and fake_slack.calls_to("chat.update") == []


def test_slow_clients_are_dropped_after_the_read_timeout_while_a_signed_request_is_answered(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack,
) -> None:
    """Sixty slow-loris clients (half dribbling headers, half a body) under the default connection bound."""
    agent = RecordingAgent()
    server = serve(agent, read_timeout_s=2.0)
    slow: list[socket.socket] = []
    for i in range(60):
        if i % 2:
            head = b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        else:
            head = b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"
        slow.append(_send_head(server, head))
    wait_until(lambda: server.active_connections == 60, what="the server to hold all 60 slow connections")

    # Meanwhile, Slack's own request is answered.
    assert post_event(server.url, SECRET, _mention("churn of u7?"))[0] == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert agent.asked == ["churn of u7?"]

    # Keep dribbling a byte to each until the server closes it (EOF or reset); bounded well above 2 s.
    open_socks = set(slow)
    deadline = time.monotonic() + 30
    while open_socks and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_socks), [], [], 0.25)
        for sock in list(open_socks):
            try:
                if sock in readable and sock.recv(1024) == b"":
                    open_socks.discard(sock)
                    continue
                sock.send(b"a")
            except OSError:  # reset or broken pipe: the server has dropped it
                open_socks.discard(sock)
    for sock in slow:
        sock.close()
    assert not open_socks, f"{len(open_socks)} of 60 slow clients were still connected after 30 s"
    wait_until(lambda: server.active_connections == 0, what="every slot to be released")


def test_connections_beyond_the_bound_get_503_at_once_and_slots_free_up(
    serve: Callable[..., EventsServer], fake_slack: FakeSlack,
) -> None:
    agent = RecordingAgent()
    server = serve(agent, max_connections=3, read_timeout_s=60)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    wait_until(lambda: server.active_connections == 3, what="three held connections")

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
        reply = extra.recv(4096)  # answered without sending anything: the server does not wait on it
    assert reply.startswith(b"HTTP/1.0 503") and b"Retry-After" in reply

    for sock in idle:
        sock.close()
    wait_until(lambda: server.active_connections == 0, what="the idle connections to be released")
    assert post_event(server.url, SECRET, _mention("churn of u7?"))[0] == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert agent.asked == ["churn of u7?"]
