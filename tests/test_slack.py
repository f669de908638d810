"""The Slack app end to end: a real Bolt HTTP server on 127.0.0.1 receives signed events and
talks to a fake Slack Web API on 127.0.0.1; a scripted agent stands in for the LLM."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from fake_slack import BOT_USER_ID, FakeSlack, message_event, post_event, sign

from shopsight.agent.types import Answer, Citations, Timings, ToolCall
from shopsight.integrations import slack_blocks
from shopsight.integrations.slack import (
    AccessPolicy,
    EventDeduper,
    EventsServer,
    SlackConfigError,
    SlackSettings,
    conversation_id,
    create_app,
    model_versions,
    question_from_text,
    socket_mode_handler,
)
from shopsight.integrations.slack_charts import activity_counts, chart_for_tool_call, score_ranking

SECRET = "test-signing-secret"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- a scripted agent ------------------------------------------------------------------------


@dataclass
class ScriptedAgent:
    """Records (conversation, question), keeps per-conversation memory, can wait for peers or fail."""

    barrier: threading.Barrier | None = None
    error: Exception | None = None
    with_history: bool = True
    asked: list[tuple[str, str]] = field(default_factory=list)
    memory: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, question: str, *, conversation_id: str) -> Answer:
        with self.lock:
            self.asked.append((conversation_id, question))
            self.memory[conversation_id].append(question)
            turn = len(self.memory[conversation_id])
        if self.barrier is not None:
            self.barrier.wait()  # both threads must be inside ask() at once, or this times out
        if self.error is not None:
            raise self.error
        sessions = [
            {"session_id": "u7-s1", "start": "2026-03-01", "purchased": False},
            {"session_id": "u7-s2", "start": "2026-03-03", "purchased": True},
            {"session_id": "u7-s3", "start": "2026-03-03", "purchased": False},
        ]
        calls = [ToolCall("get_user_history", {"user_id": "u7"}, {"user_id": "u7", "sessions": sessions})]
        if not self.with_history:
            calls = []
        calls.append(ToolCall("predict_churn", {"user_id": "u7"},
                              {"model": "churn", "probability": 0.71, "citations": {"model": "churn@v3", "sessions": ["u7-s2"]}}))
        return Answer(
            question=question, answer=f"**Turn {turn}** answering: {question}", conversation_id=conversation_id,
            citations=Citations(("u7-s2", "u7-s3"), ("churn@v3",)), tool_calls=tuple(calls),
            backend="local", model="SmolLM2-135M-Instruct.Q4_1.gguf", prompt_version="p-1a2b3c", timings=Timings(total_s=0.42),
        )


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def fake_slack():
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def _settings(fake: FakeSlack, **overrides: Any) -> SlackSettings:
    # Every field given explicitly, so no SLACK_* variable of the machine running the tests leaks in.
    values: dict[str, Any] = dict(
        bot_token="xoxb-test-token", app_token=None, signing_secret=SECRET, allowed_channels=[], allowed_users=[],
        workers=4, max_charts=2, api_url=fake.api_url,
    )
    values.update(overrides)
    return SlackSettings(**values)


@pytest.fixture
def serve(fake_slack):
    """Start the Bolt app over HTTP for an agent; yields the server (stopped afterwards)."""
    servers: list[EventsServer] = []

    def start(agent: Any, **overrides: Any) -> EventsServer:
        app = create_app(_settings(fake_slack, **overrides), agent, mode="http")
        server = EventsServer(app, host="127.0.0.1", port=0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def _ts(n: int) -> str:
    return f"{int(time.time()) - 100 + n}.{n:06d}"


def _updates_with(text: str):
    return lambda f: any(text in json.dumps(u.get("blocks")) for u in f.calls_to("chat.update"))


# -- HTTP Events API: signatures, retries --------------------------------------------------------


def test_mention_is_answered_in_its_thread_with_blocks_and_a_chart(serve, fake_slack):
    agent = ScriptedAgent()
    server = serve(agent)
    ts = _ts(1)

    status, _ = post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> what did u7 do?", ts=ts))

    assert status == 200
    fake_slack.wait_for(lambda f: f.calls_to("files.completeUploadExternal"))
    assert agent.asked == [(f"slack:T1:C1:{ts}", "what did u7 do?")]
    (placeholder,) = fake_slack.calls_to("chat.postMessage")
    assert placeholder["thread_ts"] == ts and placeholder["channel"] == "C1"
    assert placeholder["text"] == slack_blocks.LOOKING_INTO_IT
    (update,) = fake_slack.calls_to("chat.update")
    assert update["channel"] == "C1"
    blocks = json.dumps(update["blocks"])
    assert "*Turn 1* answering: what did u7 do?" in blocks
    assert "`u7-s2`" in blocks and "`u7-s3`" in blocks
    assert "churn `v3`" in blocks and "p-1a2b3c" in blocks
    (upload,) = fake_slack.calls_to("files.completeUploadExternal")
    assert upload["channel_id"] == "C1" and upload["thread_ts"] == ts
    assert json.loads(upload["files"])[0]["title"] == "Sessions of user u7"
    (png,) = fake_slack.uploads.values()
    assert png.startswith(PNG_MAGIC)


def test_placeholder_is_updated_in_place(serve, fake_slack):
    server = serve(ScriptedAgent(with_history=False))
    ts = _ts(1)  # once: _ts follows the clock, and a second may tick between two calls
    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=ts))
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    # The update must target exactly the placeholder message, not post a second one.
    (update,) = fake_slack.calls_to("chat.update")
    assert fake_slack.posted_threads() == {update["ts"]: ("C1", ts)}
    assert fake_slack.calls_to("files.getUploadURLExternal") == []  # one score: no chart helps


def test_bad_signature_is_rejected_and_nothing_is_looked_up(serve, fake_slack):
    agent = ScriptedAgent()
    server = serve(agent)
    payload = message_event(f"<@{BOT_USER_ID}> hi", ts=_ts(1))
    forged = sign("some-other-secret", str(int(time.time())), json.dumps(payload))

    status, _ = post_event(server.url, SECRET, payload, signature=forged)

    assert status == 401
    assert agent.asked == [] and fake_slack.calls_to("chat.postMessage") == []


def test_stale_timestamp_is_rejected_even_when_correctly_signed(serve, fake_slack):
    agent = ScriptedAgent()
    server = serve(agent)
    payload = message_event(f"<@{BOT_USER_ID}> hi", ts=_ts(1))

    status, _ = post_event(server.url, SECRET, payload, timestamp=int(time.time()) - 10 * 60)

    assert status == 401
    assert agent.asked == [] and fake_slack.calls_to("chat.postMessage") == []


def test_url_verification_challenge_is_answered(serve):
    server = serve(ScriptedAgent())
    status, body = post_event(server.url, SECRET, {"token": "x", "challenge": "c-123", "type": "url_verification"})
    assert status == 200 and json.loads(body)["challenge"] == "c-123"


def test_slack_retry_of_an_answered_event_is_answered_once(serve, fake_slack):
    agent = ScriptedAgent(with_history=False)
    server = serve(agent)
    first = message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=_ts(1))

    assert post_event(server.url, SECRET, first)[0] == 200
    fake_slack.wait_for(lambda f: len(f.calls_to("chat.update")) == 1)
    assert post_event(server.url, SECRET, first, retry_num=1)[0] == 200
    assert post_event(server.url, SECRET, first, retry_num=2)[0] == 200
    # A later, different event: once it is answered, any work from the retries would be visible too.
    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> marker", ts=_ts(2)))
    fake_slack.wait_for(lambda f: len(f.calls_to("chat.update")) == 2)

    assert [q for _, q in agent.asked] == ["churn of u7?", "marker"]
    assert len(fake_slack.calls_to("chat.postMessage")) == 2


def test_a_retry_whose_first_delivery_never_arrived_is_answered(serve, fake_slack):
    agent = ScriptedAgent(with_history=False)
    server = serve(agent)
    status, _ = post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=_ts(1)), retry_num=1)
    assert status == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert [q for _, q in agent.asked] == ["churn of u7?"]


# -- Web API failures and agent failures -------------------------------------------------------


def test_rate_limited_web_api_call_is_retried_after_backoff(serve, fake_slack):
    server = serve(ScriptedAgent(with_history=False))
    fake_slack.fail_next("chat.postMessage", 429, retry_after=0)

    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=_ts(1)))

    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert fake_slack.statuses("chat.postMessage") == [429, 200]
    (update,) = fake_slack.calls_to("chat.update")
    assert "churn of u7?" in json.dumps(update["blocks"])


def test_agent_failure_is_reported_in_the_thread_and_logged(serve, fake_slack, caplog):
    agent = ScriptedAgent(error=RuntimeError("llama.cpp backend crashed: out of memory"))
    server = serve(agent)
    ts = _ts(1)

    with caplog.at_level(logging.ERROR, logger="shopsight.integrations.slack"):
        post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=ts))
        fake_slack.wait_for(lambda f: f.calls_to("chat.update"))

    (update,) = fake_slack.calls_to("chat.update")
    text = json.dumps(update["blocks"])
    assert "RuntimeError" in text and "out of memory" in text
    assert fake_slack.posted_threads() == {update["ts"]: ("C1", ts)}  # the placeholder, in the asker's thread
    failures = [r for r in caplog.records if r.name == "shopsight.integrations.slack" and r.exc_info]
    assert failures and "churn of u7?" not in caplog.text  # traceback logged, the question is not


def test_chart_upload_refused_for_missing_scope_is_explained_in_the_thread(serve, fake_slack):
    server = serve(ScriptedAgent())
    fake_slack.fail_next("files.getUploadURLExternal", 200, retry_after=None, error="missing_scope")
    ts = _ts(1)

    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> what did u7 do?", ts=ts))

    fake_slack.wait_for(lambda f: len(f.calls_to("chat.postMessage")) == 2)
    note = fake_slack.calls_to("chat.postMessage")[1]
    assert note["thread_ts"] == ts and "missing_scope" in note["text"] and "files:write" in note["text"]


def test_answer_refused_by_slack_never_leaves_the_placeholder_standing(serve, fake_slack):
    server = serve(ScriptedAgent(with_history=False))
    fake_slack.fail_next("chat.update", 200, retry_after=None, error="invalid_blocks")
    ts = _ts(1)

    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=ts))

    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    (update,) = fake_slack.calls_to("chat.update")
    assert "invalid_blocks" in update["text"] and "blocks" not in update
    assert fake_slack.posted_threads() == {update["ts"]: ("C1", ts)}


# -- access control ----------------------------------------------------------------------------


def test_user_not_allowed_gets_a_polite_refusal_and_nothing_is_looked_up(serve, fake_slack):
    agent = ScriptedAgent()
    server = serve(agent, allowed_users=["U_ANALYST"])
    ts = _ts(1)

    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=ts, user="U_STRANGER"))

    fake_slack.wait_for(lambda f: f.calls_to("chat.postEphemeral"))
    (refusal,) = fake_slack.calls_to("chat.postEphemeral")
    assert refusal["user"] == "U_STRANGER" and refusal["thread_ts"] == ts and refusal["channel"] == "C1"
    assert refusal["text"] == slack_blocks.REFUSAL
    assert agent.asked == [] and fake_slack.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(
    ("allowed_channels", "channel", "is_dm", "answered"),
    [
        (["C_ANALYSTS"], "C_ANALYSTS", False, True),
        (["C_ANALYSTS"], "C_RANDOM", False, False),
        (["C_ANALYSTS"], "D_ALICE", True, False),
        (["C_ANALYSTS", "dm"], "D_ALICE", True, True),
        ([], "D_ALICE", True, True),
    ],
)
def test_allowed_channels_decide_who_is_answered(serve, fake_slack, allowed_channels, channel, is_dm, answered):
    agent = ScriptedAgent(with_history=False)
    server = serve(agent, allowed_channels=allowed_channels)
    kind = {"kind": "message", "channel_type": "im"} if is_dm else {}

    post_event(server.url, SECRET, message_event("churn of u7?", ts=_ts(1), channel=channel, **kind))

    fake_slack.wait_for(lambda f: f.calls_to("chat.update" if answered else "chat.postEphemeral"))
    assert bool(agent.asked) is answered
    assert bool(fake_slack.calls_to("chat.postEphemeral")) is (not answered)


# -- threads are conversations -----------------------------------------------------------------


def test_concurrent_threads_are_answered_at_once_and_never_mix(serve, fake_slack):
    # Both questions must be inside the agent at the same time or the barrier breaks.
    agent = ScriptedAgent(barrier=threading.Barrier(2, timeout=60), with_history=False)
    server = serve(agent)
    ts_a, ts_b = _ts(1), _ts(2)
    senders = [
        threading.Thread(target=post_event, args=(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> about A", ts=ts_a))),
        threading.Thread(target=post_event, args=(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> about B", ts=ts_b, channel="C2"))),
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=10)
    fake_slack.wait_for(lambda f: len(f.calls_to("chat.update")) == 2)
    agent.barrier = None
    # A follow-up in thread A continues A's conversation only.
    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> and then?", ts=_ts(3), thread_ts=ts_a))
    fake_slack.wait_for(lambda f: len(f.calls_to("chat.update")) == 3)

    conv_a, conv_b = conversation_id("T1", "C1", ts_a), conversation_id("T1", "C2", ts_b)
    assert agent.memory[conv_a] == ["about A", "and then?"]
    assert agent.memory[conv_b] == ["about B"]
    # Every answer went to the placeholder of its own thread.
    threads = fake_slack.posted_threads()
    for update in fake_slack.calls_to("chat.update"):
        channel, thread = threads[update["ts"]]
        text = json.dumps(update["blocks"])
        assert channel == update["channel"]
        if thread == ts_a:
            assert "about B" not in text and ("about A" in text or "*Turn 2* answering: and then?" in text)
        else:
            assert (channel, thread) == ("C2", ts_b) and "*Turn 1* answering: about B" in text


def test_direct_message_is_answered_and_bot_or_edited_messages_are_not(serve, fake_slack):
    agent = ScriptedAgent(with_history=False)
    server = serve(agent)
    dm = {"kind": "message", "channel_type": "im", "channel": "D_ALICE"}
    post_event(server.url, SECRET, message_event("edited", ts=_ts(1), subtype="message_changed", **dm))
    post_event(server.url, SECRET, message_event("from a bot", ts=_ts(2), bot_id="B_OTHER", **dm))
    asked_ts = _ts(3)
    post_event(server.url, SECRET, message_event("churn of u7?", ts=asked_ts, **dm))

    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert agent.asked == [(f"slack:T1:D_ALICE:{asked_ts}", "churn of u7?")]


def test_socket_mode_answers_events_pushed_over_the_websocket_once(fake_slack):
    socket_mode = fake_slack.open_socket_mode()
    agent = ScriptedAgent(with_history=False)
    settings = _settings(fake_slack, app_token="xapp-1-test", signing_secret=None)
    handler = socket_mode_handler(create_app(settings, agent, mode="socket"), settings)
    handler.connect()
    try:
        event = message_event(f"<@{BOT_USER_ID}> churn of u7?", ts=_ts(1))
        socket_mode.push_event(event, envelope_id="env-1")
        socket_mode.push_event(event, envelope_id="env-2", retry_attempt=1)  # Slack's redelivery
        socket_mode.push_event(message_event(f"<@{BOT_USER_ID}> marker", ts=_ts(2)), envelope_id="env-3")
        fake_slack.wait_for(lambda f: len(f.calls_to("chat.update")) == 2 and len(socket_mode.acks) == 3)
    finally:
        handler.close()

    assert sorted(q for _, q in agent.asked) == ["churn of u7?", "marker"]  # the socket client runs them in parallel
    assert sorted(socket_mode.acks) == ["env-1", "env-2", "env-3"]  # every envelope acknowledged
    assert [c.token for c in fake_slack.calls if c.method == "apps.connections.open"] == ["xapp-1-test"]


# -- settings ----------------------------------------------------------------------------------


def test_settings_read_comma_separated_allow_lists_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SHOPSIGHT_SLACK_ALLOWED_CHANNELS", "C1, C2,DM")
    monkeypatch.setenv("SHOPSIGHT_SLACK_ALLOWED_USERS", "U1")
    monkeypatch.setenv("SHOPSIGHT_SLACK_API_URL", "http://127.0.0.1:9/api")
    settings = SlackSettings.from_env(workers=2)
    assert settings.allowed_channels == ["C1", "C2", "dm"] and settings.allowed_users == ["U1"]
    assert settings.workers == 2 and settings.api_url == "http://127.0.0.1:9/api/"
    assert settings.access_policy() == AccessPolicy(channels=frozenset({"C1", "C2", "dm"}), users=frozenset({"U1"}))


def test_channel_names_instead_of_ids_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="channel ids such as C0123ABCD"):
        SlackSettings(allowed_channels="#general")


@pytest.mark.parametrize(
    ("values", "mode", "names"),
    [
        ({}, "http", ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"]),
        ({"bot_token": "xoxp-user"}, "http", ["starting with xoxb-"]),
        ({"bot_token": "xoxb-1"}, "socket", ["SLACK_APP_TOKEN"]),
        ({"bot_token": "xoxb-1", "app_token": "xoxb-2"}, "socket", ["starting with xapp-"]),
    ],
)
def test_missing_secrets_are_named(values, mode, names):
    base = dict(bot_token=None, app_token=None, signing_secret=None)
    with pytest.raises(SlackConfigError) as err:
        SlackSettings(**{**base, **values}).check(mode)
    for name in names:
        assert name in str(err.value)


# -- small pure pieces -------------------------------------------------------------------------


def test_event_deduper_remembers_a_bounded_number_of_ids():
    dedupe = EventDeduper(capacity=2)
    assert [dedupe.first_delivery(e) for e in ("a", "a", "b", "c", "a")] == [True, False, True, True, True]


def test_question_drops_the_bots_mention_and_keeps_others():
    assert question_from_text(f"<@{BOT_USER_ID}>   is <@U2|bob> right? <@{BOT_USER_ID}>", BOT_USER_ID) == "is <@U2|bob> right?"
    assert question_from_text("<@UOTHER> top users by churn", None) == "top users by churn"


def test_model_versions_come_from_the_answers_citations():
    answer = Answer(question="q", answer="ok", conversation_id="c", citations=Citations(("s1",), ("churn@v5", "risk@v2")))
    assert model_versions(answer) == {"churn": "v5", "risk": "v2"}


def test_long_answers_are_split_within_block_kit_limits_and_escaped():
    answer = "\n\n".join(f"Paragraph {i} <b> & " + "x" * 900 for i in range(12))
    blocks = slack_blocks.answer_blocks(answer, citations=[f"s{i}" for i in range(20)])
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) >= 4 and all(len(b["text"]["text"]) <= slack_blocks.SECTION_LIMIT for b in sections)
    assert "&lt;b&gt; &amp;" in sections[0]["text"]["text"] and "<b>" not in json.dumps(blocks)
    assert "and 8 more" in json.dumps(blocks)
    assert len(slack_blocks.fallback_text(answer)) <= slack_blocks.FALLBACK_LIMIT


def test_activity_counts_fill_gaps_and_switch_to_weeks_for_long_spans():
    days = activity_counts([{"start": "2026-03-01", "purchased": True}, {"start": "2026-03-03"}])
    assert days.to_dict("list") == {"purchase": [1, 0, 0], "no purchase": [0, 0, 1]}
    weeks = activity_counts([{"start": "2026-01-01"}, {"start": "2026-03-30"}, {"start": "2026-03-31"}])
    assert len(weeks) == 14 and int(weeks.sum().sum()) == 3 and int(weeks.iloc[-1]["no purchase"]) == 2


def test_score_ranking_orders_by_score_and_a_chart_is_drawn_only_when_it_helps():
    rows = [{"user_id": "u1", "probability": 0.2}, {"user_id": "u2", "probability": 0.9}]
    assert score_ranking(rows) == ([("u2", 0.9), ("u1", 0.2)], "probability")
    chart = chart_for_tool_call("top_users", {"metric": "risk"}, {"metric": "risk", "users": rows})
    assert chart is not None and chart.png.startswith(PNG_MAGIC) and chart.title == "Top 2 by risk"
    assert chart_for_tool_call("top_users", {}, {"users": rows[:1]}) is None
    assert chart_for_tool_call("top_users", {}, {"error": "no scores", "users": rows}) is None


# -- the CLI -------------------------------------------------------------------------------------

_SLACK_ENV = (
    "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "SHOPSIGHT_SLACK_ALLOWED_CHANNELS",
    "SHOPSIGHT_SLACK_ALLOWED_USERS", "SHOPSIGHT_SLACK_WORKERS", "SHOPSIGHT_SLACK_MAX_CHARTS", "SHOPSIGHT_SLACK_API_URL",
)


def test_cli_check_verifies_the_token_with_slack_and_flags_beat_env(fake_slack, monkeypatch):
    from typer.testing import CliRunner

    from shopsight.cli import app

    for name in _SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-cli")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("SHOPSIGHT_SLACK_API_URL", fake_slack.api_url)
    monkeypatch.setenv("SHOPSIGHT_SLACK_ALLOWED_CHANNELS", "C_FROM_ENV")

    result = CliRunner().invoke(app, ["slack", "--check", "--json", "--allow-channel", "C_FLAG", "--allow-user", "U1"])

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mode"] == "http" and info["bot_user_id"] == BOT_USER_ID and info["team_id"] == "T1"
    assert info["allowed_channels"] == ["C_FLAG"] and info["allowed_users"] == ["U1"]
    assert [c.token for c in fake_slack.calls if c.method == "auth.test"] == ["xoxb-cli"]
    assert SECRET not in result.output


def test_cli_without_tokens_names_the_variables_to_set(monkeypatch):
    from typer.testing import CliRunner

    from shopsight.cli import app

    for name in _SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["slack", "--mode", "socket"])
    assert result.exit_code == 2
    assert "SLACK_BOT_TOKEN" in result.output and "SLACK_APP_TOKEN" in result.output


# -- the app manifest ----------------------------------------------------------------------------

# The bot scope each Web API method the app calls needs (from Slack's method reference).
_SCOPE_FOR = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}


def test_manifest_grants_every_scope_and_event_the_app_uses(serve, fake_slack):
    from pathlib import Path

    import yaml

    manifest = yaml.safe_load((Path(__file__).parents[1] / "integrations" / "slack_manifest.yaml").read_text())
    server = serve(ScriptedAgent(), allowed_users=["U1"])
    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> what did u7 do?", ts=_ts(1)))
    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> hi", ts=_ts(2), user="U_STRANGER"))
    fake_slack.wait_for(lambda f: f.calls_to("files.completeUploadExternal") and f.calls_to("chat.postEphemeral"))

    used = {c.method for c in fake_slack.calls} - {"auth.test"}
    assert used == set(_SCOPE_FOR)
    assert {_SCOPE_FOR[m] for m in used} <= set(manifest["oauth_config"]["scopes"]["bot"])
    # app_mention for channels, message.im (with im:history) for direct messages.
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {"app_mention", "message.im"}
    assert {"app_mentions:read", "im:history"} <= set(manifest["oauth_config"]["scopes"]["bot"])
    assert len(manifest["display_information"]["long_description"]) >= 174  # Slack refuses shorter ones


# -- with the real agent -------------------------------------------------------------------------


def test_real_agent_answers_in_slack_with_model_version_and_ranking_chart(serve, fake_slack, workspace):
    """Slack → the real agent loop (scripted LLM) → top_users on a tiny shop → Block Kit + chart."""
    from langchain_core.messages import AIMessage
    from test_agent_support import tiny_context

    from shopsight.agent import Settings, build_agent
    from shopsight.agent.fake import ScriptedChatModel
    from shopsight.agent.memory import ConversationStore

    llm = ScriptedChatModel(replies=[
        AIMessage(content="", tool_calls=[{"name": "top_users", "args": {"metric": "churn", "limit": 3}, "id": "c1"}]),
        "The users most likely to churn are u00003 (88.1%), u00004 (65.4%) and u00002 (34.7%).",
    ])
    agent = build_agent(Settings(SHOPSIGHT_BACKEND="openai"), workspace, chat_model=llm, ctx=tiny_context(workspace))
    server = serve(agent)
    ts = _ts(1)

    post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> top 3 users by churn?", ts=ts))

    fake_slack.wait_for(lambda f: f.calls_to("files.completeUploadExternal"), timeout=60)
    (update,) = fake_slack.calls_to("chat.update")
    blocks = json.dumps(update["blocks"])
    assert "u00003 (88.1%)" in blocks and "churn `v1`" in blocks
    (upload,) = fake_slack.calls_to("files.completeUploadExternal")
    assert upload["thread_ts"] == ts and json.loads(upload["files"])[0]["title"] == "Top 3 by churn"
    assert ConversationStore.for_workspace(workspace).exists(f"slack:T1:C1:{ts}")


def test_the_bolt_app_leaves_shopsights_own_loggers_at_their_levels(serve, fake_slack):
    # Bolt gives a logger named after the app its base logger's WARNING level; were it "shopsight",
    # every shopsight.* logger (this bot's "401 refused" lines among them) would go quiet at INFO.
    server = serve(ScriptedAgent())
    status, _ = post_event(server.url, SECRET, message_event(f"<@{BOT_USER_ID}> what did u7 do?", ts=_ts(1)))
    assert status == 200
    fake_slack.wait_for(lambda f: f.calls_to("chat.update"))
    assert logging.getLogger("shopsight").level == logging.NOTSET
    assert logging.getLogger("shopsight.integrations.slack").getEffectiveLevel() == logging.getLogger().getEffectiveLevel()
