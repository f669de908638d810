"""ShopSight as a Slack app: answers @mentions and direct messages, one conversation per thread.

The app is Bolt for Python. It acknowledges each event at once, posts "Looking into it…"
in the thread, asks the injected :class:`Answerer` (the agent), then replaces that message
with the answer in Block Kit and uploads a chart when one helps. It runs over Socket Mode
(``SLACK_APP_TOKEN``) or the HTTP Events API (``SLACK_SIGNING_SECRET``): :class:`EventsServer`
checks every request's size, signature and timestamp before it parses a byte of the body,
bounds how long a client may take and how many are served at once, and only then hands the
request to Bolt (which checks the signature again).

Usage::

    settings = SlackSettings.from_env()
    app = create_app(settings, answerer=my_agent, mode="http")
    EventsServer(app, host="127.0.0.1", port=3000).serve_forever()
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import SignatureVerifier

from shopsight.agent.types import Answer

if TYPE_CHECKING:  # Bolt is imported when an app is built, not when this module is
    from slack_bolt import App
    from slack_bolt.adapter.socket_mode import SocketModeHandler
    from slack_sdk import WebClient

from shopsight.integrations import slack_blocks
from shopsight.integrations.slack_charts import Chart, charts_for_tool_calls

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
# The entry in SHOPSIGHT_SLACK_ALLOWED_CHANNELS that lets direct messages through.
DM = "dm"
# How many event ids are remembered to drop Slack's redeliveries; Slack retries within
# minutes, so a few thousand ids cover hours of traffic at team scale.
DEDUPE_CAPACITY = 10_000
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")

# Bounds of the HTTP Events API endpoint (issue 16). Slack caps a message's text at 40,000
# characters, so its events are at most a few hundred KB even with blocks: 1 MiB refuses
# nothing real and keeps one request from occupying the bot.
MAX_REQUEST_BYTES = 1 << 20
# Seconds a client has to send its whole request (headers and body) and, separately, to take
# the response. Slack sends within milliseconds; a slow-loris client is dropped after this.
READ_TIMEOUT_S = 5.0
# Connections served at once, one thread each; a client beyond this gets 503 at once.
MAX_CONNECTIONS = 64
# Slack's replay window for a signed request: five minutes either way.
SIGNATURE_MAX_AGE_S = 5 * 60
# The longest question asked of the agent; a longer message gets a "too long" reply instead.
MAX_QUESTION_CHARS = 4_000


class SlackConfigError(ValueError):
    """The Slack app cannot start with this configuration; the message names the setting to fix."""


def _split_ids(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, tuple, set, frozenset)) else re.split(r"[,\s]+", str(value))
    return [str(i).strip() for i in items if str(i).strip()]


class SlackSettings(BaseSettings):
    """How the Slack app connects and who may use it. Build it with :meth:`from_env`.

    Environment variables: SLACK_BOT_TOKEN (xoxb-…), SLACK_APP_TOKEN (xapp-…, Socket Mode),
    SLACK_SIGNING_SECRET (HTTP Events API), SHOPSIGHT_SLACK_ALLOWED_CHANNELS and
    SHOPSIGHT_SLACK_ALLOWED_USERS (comma-separated ids; empty allows everyone; the entry
    ``dm`` in the channel list allows direct messages), SHOPSIGHT_SLACK_WORKERS (questions
    answered at once), SHOPSIGHT_SLACK_MAX_CHARTS, SHOPSIGHT_SLACK_MAX_QUESTION_CHARS (longer
    messages are not asked of the agent), SHOPSIGHT_SLACK_API_URL (a proxy or a test server in
    place of https://slack.com/api/), SHOPSIGHT_SLACK_ALERT_CHANNEL (the channel id `shopsight watch`
    posts risk alerts to; the app records the analysts' clicks on them).
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    allowed_channels: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="SHOPSIGHT_SLACK_ALLOWED_CHANNELS")
    allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="SHOPSIGHT_SLACK_ALLOWED_USERS")
    workers: int = Field(default=4, ge=1, le=32, alias="SHOPSIGHT_SLACK_WORKERS")
    max_charts: int = Field(default=2, ge=0, le=5, alias="SHOPSIGHT_SLACK_MAX_CHARTS")
    max_question_chars: int = Field(default=MAX_QUESTION_CHARS, ge=1, le=40_000, alias="SHOPSIGHT_SLACK_MAX_QUESTION_CHARS")
    api_url: str = Field(default=DEFAULT_API_URL, alias="SHOPSIGHT_SLACK_API_URL")
    alert_channel: str | None = Field(default=None, alias="SHOPSIGHT_SLACK_ALERT_CHANNEL")

    @field_validator("allowed_channels", "allowed_users", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> list[str]:
        return _split_ids(value)

    @field_validator("allowed_channels")
    @classmethod
    def _channel_ids(cls, value: list[str]) -> list[str]:
        names = [v for v in value if v.startswith("#")]
        if names:
            raise ValueError(
                f"SHOPSIGHT_SLACK_ALLOWED_CHANNELS takes channel ids such as C0123ABCD (or 'dm'), not names: "
                f"{', '.join(names)}. Find a channel's id under its name > About in Slack."
            )
        return [DM if v.lower() == DM else v for v in value]

    @field_validator("api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @classmethod
    def from_env(cls, **overrides: Any) -> "SlackSettings":
        """Read the environment, then apply ``overrides`` that are not None (CLI flags)."""
        settings = cls()
        given = {k: v for k, v in overrides.items() if v is not None}
        # Re-validate so overrides get the same parsing as env values.
        return cls.model_validate({**settings.model_dump(), **given}) if given else settings

    def access_policy(self) -> "AccessPolicy":
        """Who may ask, from the allowed channels and users."""
        return AccessPolicy(channels=frozenset(self.allowed_channels), users=frozenset(self.allowed_users))

    def mode(self) -> Literal["socket", "http"]:
        """Socket Mode when an app-level token is set, else the HTTP Events API."""
        return "socket" if self.app_token is not None else "http"

    def check(self, mode: Literal["socket", "http"]) -> None:
        """Raise :class:`SlackConfigError` naming each missing or malformed secret for ``mode``."""
        problems = []
        bot = self.bot_token.get_secret_value() if self.bot_token else ""
        if not bot:
            problems.append("set SLACK_BOT_TOKEN to the app's Bot User OAuth Token (xoxb-…, under OAuth & Permissions)")
        elif not bot.startswith("xoxb-"):
            problems.append("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        if mode == "socket":
            app = self.app_token.get_secret_value() if self.app_token else ""
            if not app:
                problems.append("set SLACK_APP_TOKEN to an app-level token with connections:write (xapp-…, under Basic Information)")
            elif not app.startswith("xapp-"):
                problems.append("SLACK_APP_TOKEN must be an app-level token starting with xapp-")
        elif not (self.signing_secret and self.signing_secret.get_secret_value()):
            problems.append(
                "set SLACK_SIGNING_SECRET (Basic Information > App Credentials) for the HTTP Events API, "
                "or SLACK_APP_TOKEN for Socket Mode"
            )
        if problems:
            raise SlackConfigError("Slack app not configured: " + "; ".join(problems) + ". See docs/slack.md.")


@dataclass(frozen=True)
class AccessPolicy:
    """Which channels and users are answered; an empty set allows everyone on that side."""

    channels: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def allows(self, *, channel: str, user: str, is_dm: bool) -> bool:
        """True when ``user`` may ask in ``channel`` (a direct message needs ``dm`` in a channel list)."""
        if self.users and user not in self.users:
            return False
        if not self.channels:
            return True
        return channel in self.channels or (is_dm and DM in self.channels)


class EventDeduper:
    """Remembers the last ``capacity`` event ids, so a redelivered event is answered once. Thread-safe."""

    def __init__(self, capacity: int = DEDUPE_CAPACITY) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_delivery(self, event_id: str) -> bool:
        """True the first time ``event_id`` is seen, False for every repeat while it is remembered."""
        with self._lock:
            if event_id in self._seen:
                self._seen.move_to_end(event_id)
                return False
            self._seen[event_id] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True


class _ConversationLocks:
    """One lock per conversation, striped so memory stays bounded: a thread's questions are
    answered in order (its memory is updated one turn at a time) while threads run in parallel."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def lock_for(self, conversation_id: str) -> threading.Lock:
        return self._locks[hash(conversation_id) % len(self._locks)]


def model_versions(answer: Answer) -> dict[str, str]:
    """Trained model name → version an answer cites (``churn@v3`` → ``{"churn": "v3"}``)."""
    return dict(ref.split("@", 1) for ref in answer.citations.models if "@" in ref)


class Answerer(Protocol):
    """The agent as the Slack app sees it: one question in, one :class:`Answer` out, memory per conversation.

    ``ask`` may be called from several threads at once, for different conversations; calls for
    one conversation never overlap.
    """

    def ask(self, question: str, *, conversation_id: str) -> Answer:  # pragma: no cover - protocol
        ...


def conversation_id(team_id: str, channel: str, thread_ts: str) -> str:
    """The agent's conversation for one Slack thread: threads never share memory."""
    return f"slack:{team_id}:{channel}:{thread_ts}"


def question_from_text(text: str, bot_user_id: str | None = None) -> str:
    """The question in a message, without the @mention that addressed the bot.

    Other people's mentions stay: they may be part of the question. Without ``bot_user_id``
    a leading mention is taken to be the bot's.
    """
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text or "")
    else:
        text = re.sub(rf"^\s*{_MENTION.pattern}", " ", text or "")
    return " ".join(text.split())


@dataclass(frozen=True)
class IncomingMessage:
    """A message that addressed the bot: where it was posted, by whom, and its text."""

    team_id: str
    channel: str
    user: str
    text: str
    ts: str
    thread_ts: str | None = None
    is_dm: bool = False
    bot_user_id: str | None = None

    @property
    def thread(self) -> str:
        """The thread to answer in: the message's thread, or a new thread under the message."""
        return self.thread_ts or self.ts

    @property
    def conversation_id(self) -> str:
        return conversation_id(self.team_id, self.channel, self.thread)


def too_long_text(length: int, limit: int) -> str:
    """The reply to a message too long to be a question (the agent is not asked)."""
    return (
        f"That message is {length:,} characters long; I answer questions of up to {limit:,}. "
        "Ask it in a sentence or two: I look the data up in the workspace myself."
    )


class SlackAnalyst:
    """Answers one message in its thread: access check, placeholder, agent, Block Kit answer, charts."""

    def __init__(
        self, answerer: Answerer, policy: AccessPolicy, *, max_charts: int = 2, max_question_chars: int = MAX_QUESTION_CHARS
    ) -> None:
        self._answerer = answerer
        self._policy = policy
        self._max_charts = max_charts
        self._max_question_chars = max_question_chars
        self._locks = _ConversationLocks()

    def answer(self, client: Any, message: IncomingMessage) -> None:
        """Answer ``message`` through the Slack Web API ``client`` (a ``slack_sdk.WebClient``).

        Refused senders get an ephemeral note and nothing is looked up. An agent failure
        replaces the placeholder with the error (and is logged with its traceback).
        """
        # Ids only in logs: message text may hold personal data.
        if not self._policy.allows(channel=message.channel, user=message.user, is_dm=message.is_dm):
            logger.info("refused user %s in channel %s (not in the allowed lists)", message.user, message.channel)
            client.chat_postEphemeral(
                channel=message.channel, user=message.user, thread_ts=message.thread, text=slack_blocks.REFUSAL
            )
            return
        question = question_from_text(message.text, message.bot_user_id)
        if not question:
            client.chat_postMessage(channel=message.channel, thread_ts=message.thread, text=slack_blocks.EMPTY_QUESTION)
            return
        if len(question) > self._max_question_chars:
            # A pasted log or a 2M-character message would hold a worker (and the GIL, in the
            # masker and the router) for minutes: it is answered here and never reaches the agent.
            logger.info("not asking a %d-character question in %s (limit %d)",
                        len(question), message.conversation_id, self._max_question_chars)
            client.chat_postMessage(
                channel=message.channel, thread_ts=message.thread, text=too_long_text(len(question), self._max_question_chars)
            )
            return
        placeholder = client.chat_postMessage(
            channel=message.channel, thread_ts=message.thread, text=slack_blocks.LOOKING_INTO_IT
        )
        channel, placeholder_ts = placeholder["channel"], placeholder["ts"]
        conversation = message.conversation_id
        with self._locks.lock_for(conversation):
            try:
                reply = self._answerer.ask(question, conversation_id=conversation)
            except Exception as exc:  # every agent/LLM failure is shown in the thread and logged, never hidden
                logger.exception("the agent failed to answer in %s", conversation)
                client.chat_update(
                    channel=channel,
                    ts=placeholder_ts,
                    text=slack_blocks.failure_text(exc),
                    blocks=slack_blocks.failure_blocks(exc),
                )
                return
        blocks = slack_blocks.answer_blocks(
            reply.answer,
            citations=reply.citations.sessions,
            model_versions=model_versions(reply),
            backend=reply.backend,
            model=reply.model,
            prompt_version=reply.prompt_version,
            latency_s=reply.latency_s,
        )
        try:
            client.chat_update(channel=channel, ts=placeholder_ts, text=slack_blocks.fallback_text(reply.answer), blocks=blocks)
        except SlackApiError as exc:
            # Slack refused the message (e.g. invalid_blocks): never leave "Looking into it…" standing.
            code = str(exc.response.get("error") or exc.response.status_code)
            logger.exception("Slack refused the answer in %s: %s", conversation, code)
            client.chat_update(channel=channel, ts=placeholder_ts, text=slack_blocks.refused_answer_text(code))
            return
        logger.info("answered in %s (%d tool calls)", conversation, len(reply.tool_calls))
        self._upload_charts(client, channel, message.thread, charts_for_tool_calls(reply.tool_calls, self._max_charts))

    @staticmethod
    def _upload_charts(client: Any, channel: str, thread_ts: str, charts: Sequence[Chart]) -> None:
        for chart in charts:
            try:
                client.files_upload_v2(
                    channel=channel,
                    thread_ts=thread_ts,
                    file=chart.png,
                    filename=chart.filename,
                    title=chart.title,
                    alt_txt=chart.alt_text,
                )
            except SlackApiError as exc:
                # The answer is already posted; say in the thread why its chart is missing.
                code = str(exc.response.get("error") or exc.response.status_code)
                logger.warning("chart upload failed in %s: %s", channel, code)
                client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=slack_blocks.chart_failure_text(code))
                return


def web_client(settings: SlackSettings) -> WebClient:
    """The Slack Web API client: the bot token, the API URL, and retries on rate limits (429).

    slack-sdk's ``RateLimitErrorRetryHandler`` waits the ``Retry-After`` seconds Slack
    sends (plus up to 1 s of jitter) and tries again, up to 3 times per call.
    """
    from slack_sdk import WebClient
    from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

    token = settings.bot_token.get_secret_value() if settings.bot_token else None
    return WebClient(
        token=token,
        base_url=settings.api_url,
        retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=2), RateLimitErrorRetryHandler(max_retry_count=3)],
    )


def check_connection(settings: SlackSettings, mode: Literal["socket", "http"] | None = None) -> dict[str, Any]:
    """Check the configuration for ``mode`` and the bot token (Slack's ``auth.test``); say who the bot is.

    Returns:
        Team, bot user, mode, API URL and the allowed channels and users (never a secret).

    Raises:
        SlackConfigError: A setting is missing, Slack cannot be reached, or Slack refuses the token.
    """
    mode = mode or settings.mode()
    settings.check(mode)
    try:
        who = web_client(settings).auth_test()
    except SlackApiError as exc:
        code = exc.response.get("error") or exc.response.status_code
        raise SlackConfigError(f"Slack refused SLACK_BOT_TOKEN ({code}): copy the Bot User OAuth Token again") from exc
    except (SlackClientError, OSError) as exc:
        raise SlackConfigError(f"could not reach Slack at {settings.api_url}: {exc}") from exc
    return {
        "mode": mode,
        "team": who.get("team"),
        "team_id": who.get("team_id"),
        "bot_user": who.get("user"),
        "bot_user_id": who.get("user_id"),
        "api_url": settings.api_url,
        "allowed_channels": list(settings.allowed_channels),
        "allowed_users": list(settings.allowed_users),
        "workers": settings.workers,
    }


def _answer_each_event_once(deduper: EventDeduper) -> Callable[..., Any]:
    """Bolt middleware: drop a redelivered event (``X-Slack-Retry-Num``, or Socket Mode's retry) already seen.

    Deduplicating by ``event_id`` rather than dropping every retry keeps the one case where
    the retry is the only delivery that reached us (the first one failed on the way).
    """
    from slack_bolt.response import BoltResponse

    def answer_each_event_once(body: dict, request: Any, next: Callable[[], None]) -> Any:  # noqa: A002 - Bolt's name
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and not deduper.first_delivery(str(event_id)):
            retry = (request.headers.get("x-slack-retry-num") or ["?"])[0]
            logger.info("event %s already answered: ignoring redelivery (retry %s)", event_id, retry)
            return BoltResponse(status=200, body="")
        return next()

    return answer_each_event_once


def _incoming(event: Mapping[str, Any], body: Mapping[str, Any], context: Any, *, is_dm: bool) -> IncomingMessage | None:
    """The message an event carries, or None (logged) when it lacks the channel, user or ts to answer in."""
    missing = [key for key in ("channel", "user", "ts") if not isinstance(event.get(key), str) or not event.get(key)]
    if missing:
        # Answering anyway would post to channel "None" (or to the wrong thread).
        logger.warning("dropped event %s (%s): it has no %s to answer in", body.get("event_id"), event.get("type"), " or ".join(missing))
        return None
    return IncomingMessage(
        team_id=str(body.get("team_id") or event.get("team") or "T?"),
        channel=str(event["channel"]),
        user=str(event["user"]),
        text=str(event.get("text") or ""),
        ts=str(event["ts"]),
        thread_ts=str(event["thread_ts"]) if event.get("thread_ts") else None,
        is_dm=is_dm,
        bot_user_id=context.get("bot_user_id"),
    )


def create_app(settings: SlackSettings, answerer: Answerer, *, mode: Literal["socket", "http"] | None = None,
               workspace: Any = None) -> App:
    """The Bolt app answering ``app_mention`` events and direct messages with ``answerer``.

    Args:
        settings: Tokens, secrets, allowed channels and users, worker count.
        answerer: The agent (see :class:`Answerer`).
        mode: "http" (Events API: the signing secret is required) or "socket"; default from settings.
        workspace: Where the analysts' clicks on risk alerts ("confirm fraud" / "false alarm") are
            recorded; None: the buttons are not handled.

    Raises:
        SlackConfigError: A token or secret the mode needs is missing or malformed.
    """
    from slack_bolt import App
    from slack_bolt.error import BoltError

    mode = mode or settings.mode()
    settings.check(mode)
    # Bolt logs the raw body of a request whose signature fails at INFO level; that body is
    # a user's message, so Bolt's own logger is kept at WARNING.
    bolt_logger = logging.getLogger("shopsight.slack.bolt")
    bolt_logger.setLevel(logging.WARNING)
    # Socket Mode requests carry no signature (Bolt skips the check for them); without a
    # secret, a random one makes sure no HTTP request could ever pass verification.
    secret = settings.signing_secret.get_secret_value() if settings.signing_secret else secrets.token_hex(32)
    try:
        app = App(
            client=web_client(settings),  # carries the bot token; Bolt checks it with auth.test now
            signing_secret=secret,
            # Ack first, answer in a worker: Slack redelivers any event not acked within 3 s.
            process_before_response=False,
            listener_executor=ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="slack-answer"),
            logger=bolt_logger,
            # Bolt names a logger after the app and gives it bolt_logger's level: a dotless name off
            # the `shopsight` tree, or every shopsight.* logger would inherit WARNING.
            name="shopsight-slack",
        )
    except BoltError as exc:
        raise SlackConfigError(f"Slack refused the bot token (SLACK_BOT_TOKEN): {exc}. See docs/slack.md.") from exc
    analyst = SlackAnalyst(
        answerer, settings.access_policy(), max_charts=settings.max_charts, max_question_chars=settings.max_question_chars
    )
    app.use(_answer_each_event_once(EventDeduper()))
    if workspace is not None:
        from shopsight.integrations.risk_alerts import register_label_actions

        register_label_actions(app, workspace, settings.access_policy())

    @app.event("app_mention")
    def answer_mention(event: dict, body: dict, client: Any, context: Any) -> None:
        message = _incoming(event, body, context, is_dm=False)
        if message is not None:
            analyst.answer(client, message)

    @app.event("message")
    def answer_direct_message(event: dict, body: dict, client: Any, context: Any) -> None:
        # Channel messages arrive as app_mention; edits, joins and other bots' posts are not questions.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        message = _incoming(event, body, context, is_dm=True)
        if message is not None:
            analyst.answer(client, message)

    return app


# --- the HTTP Events API endpoint ------------------------------------------------------------
# Why not Bolt's WSGI adapter under wsgiref (what this was) or uvicorn: wsgiref has no timeout
# and a thread per connection without bound, and it hands Bolt the body before anything is
# checked; uvicorn arms no timer before a connection's first request, so slow-loris clients
# are held until they leave and, with limit_concurrency, they lock everyone else out. The
# stdlib server below is small enough to bound completely: a deadline on reading each
# request, a semaphore on connections, the size read from Content-Length, and the signature
# checked on the raw bytes before Bolt parses them.


class _Refused(Exception):
    """A request answered with ``status`` before it reaches Bolt; ``reason`` is its one log line."""

    def __init__(self, status: int, reason: str, *, level: int = logging.INFO) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.level = level


class _RawBodyVerifier(SignatureVerifier):
    """slack-sdk's verifier (its clock window, ``hmac.compare_digest``) over the body's bytes as sent.

    The stock one decodes bytes as UTF-8 before hashing and raises on a body that is not UTF-8;
    Slack signs the bytes, so those are what is hashed here, and nothing is decoded before the
    signature holds.
    """

    def generate_signature(self, *, timestamp: str, body: str | bytes) -> str | None:
        raw = body.encode() if isinstance(body, str) else (body or b"")
        digest = hmac.new(self.signing_secret.encode(), b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256)
        return f"v0={digest.hexdigest()}"


@dataclass(frozen=True)
class EndpointLimits:
    """How much one client may ask of the Events API endpoint (defaults: the module's constants)."""

    max_request_bytes: int = MAX_REQUEST_BYTES
    read_timeout_s: float = READ_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


class SlackEndpoint:
    """One Events API request in, one response out: size, signature, timestamp, shape, then Bolt.

    Kept apart from the HTTP plumbing so each check is plain code: nothing of the body is
    decoded or parsed until its HMAC matches, and a signed body Bolt cannot read is a 400
    with one log line, never a traceback.
    """

    def __init__(self, app: App, *, path: str, signing_secret: str, max_request_bytes: int = MAX_REQUEST_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.path = path
        self.max_request_bytes = max_request_bytes
        self._verifier = _RawBodyVerifier(signing_secret)
        self._clock = clock

    def content_length(self, method: str, target: str, headers: Message) -> int:
        """The body size to read; raises :class:`_Refused` for a wrong path, method or size."""
        if urlsplit(target).path != self.path:
            raise _Refused(404, f"no endpoint at {urlsplit(target).path[:80]!r}")
        if method != "POST":
            raise _Refused(405, f"{method} is not accepted, only POST")
        given = headers.get("Content-Length")
        if given is None:
            raise _Refused(411, "no Content-Length")
        if not (given.isascii() and given.isdigit()) or len(given) > 12:
            raise _Refused(400, "unreadable Content-Length")
        length = int(given)
        if length > self.max_request_bytes:
            raise _Refused(413, f"a {length:,}-byte body, over the {self.max_request_bytes:,}-byte limit")
        return length

    def verify(self, raw: bytes, headers: Message) -> None:
        """Raise :class:`_Refused` (401) unless ``raw`` carries Slack's signature from the last five minutes."""
        timestamp = headers.get("X-Slack-Request-Timestamp")
        signature = headers.get("X-Slack-Signature")
        if not timestamp or not signature:
            raise _Refused(401, "no Slack signature headers")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise _Refused(401, "the signature timestamp is not a number")
        if abs(self._clock() - int(timestamp)) > SIGNATURE_MAX_AGE_S:
            raise _Refused(401, "the signature timestamp is outside the five-minute window")
        # compare_digest refuses non-ASCII text with a TypeError: such a signature is simply wrong.
        if not signature.isascii() or not self._verifier.is_valid(body=raw, timestamp=timestamp, signature=signature):
            raise _Refused(401, "the signature does not match")

    def bolt_request(self, raw: bytes, target: str, headers: Message) -> Any:
        """The signed body as a ``BoltRequest``; raises :class:`_Refused` (400) when Slack's body is unreadable."""
        from slack_bolt.request import BoltRequest
        from slack_bolt.request.internals import parse_body

        malformed = logging.WARNING  # a signed body came from Slack (or the secret leaked): worth seeing
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(400, f"the body is not UTF-8 (byte {exc.start})", level=malformed) from None
        normalized: dict[str, list[str]] = {}
        for key, value in headers.items():
            normalized.setdefault(key.lower(), []).append(value)
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower() or None
        # Bolt's own parser, so what is checked here is exactly what Bolt will read.
        try:
            payload = parse_body(text, content_type)
        except ValueError as exc:
            raise _Refused(400, f"the body is not valid JSON or form data ({type(exc).__name__}: {str(exc)[:80]})",
                           level=malformed) from None
        if not isinstance(payload, dict):
            raise _Refused(400, f"the body is a JSON {type(payload).__name__}, not an object", level=malformed)
        if payload.get("type") == "event_callback" and not isinstance(payload.get("event"), dict):
            raise _Refused(400, "an event_callback without an event object", level=malformed)
        try:
            return BoltRequest(body=text, query=urlsplit(target).query, headers=normalized)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            # Bolt reads ids out of authorizations, enterprise, team, user, channel: wrong types there.
            raise _Refused(400, f"Bolt cannot read the body ({type(exc).__name__}: {str(exc)[:80]})", level=malformed) from None

    def dispatch(self, request: Any) -> tuple[int, dict[str, Sequence[str]], bytes]:
        """Bolt's answer to a checked request as (status, headers, body)."""
        response = self.app.dispatch(request)
        body = response.body if isinstance(response.body, bytes) else str(response.body or "").encode()
        return int(response.status), dict(response.headers or {}), body


class _DeadlineReader(io.RawIOBase):
    """A socket read until one deadline: each ``recv`` waits at most the time left, so a client
    sending a byte every second (slow loris) is cut off when the deadline passes, not per byte."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete within the read timeout")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """Writes straight to the socket (``sendall``), as the stdlib handler's unbuffered ``wfile`` does."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class _EventsRequestHandler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0: the deadline covers all of it), checked by the endpoint."""

    server: "_BoundedHTTPServer"
    protocol_version = "HTTP/1.0"
    server_version = "ShopSight"
    sys_version = ""

    def setup(self) -> None:
        self.connection = self.request
        deadline = time.monotonic() + self.server.limits.read_timeout_s
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))
        self.wfile = _SocketWriter(self.connection)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()  # a read past the deadline ends here as TimeoutError → log_error

    def finish(self) -> None:
        self.rfile.close()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._serve("POST")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve("GET")

    def _serve(self, method: str) -> None:
        endpoint = self.server.endpoint
        client = self.client_address[0]
        body_read = False
        try:
            length = endpoint.content_length(method, self.path, self.headers)
            raw = self.rfile.read(length)
            body_read = True
            if len(raw) < length:
                logger.info("dropped a request from %s: the client closed before sending its body", client)
                return
            endpoint.verify(raw, self.headers)
            request = endpoint.bolt_request(raw, self.path, self.headers)
        except _Refused as refusal:
            logger.log(refusal.level, "refused a request from %s with %d: %s", client, refusal.status, refusal.reason)
            self._send(refusal.status, {"Content-Type": ["text/plain"]}, refusal.reason.encode() + b"\n")
            if not body_read:
                self._drain()
            return
        try:
            status, headers, body = endpoint.dispatch(request)
        except Exception:  # a bug in Bolt or a listener: seen in full, answered 500
            logger.exception("Bolt failed on a signed request from %s", client)
            self._send(500, {"Content-Type": ["text/plain"]}, b"internal error\n")
            return
        self._send(status, headers, body)

    def _send(self, status: int, headers: Mapping[str, Sequence[str]], body: bytes) -> None:
        # Writing gets its own timeout: a client that does not read its response is dropped too.
        self.connection.settimeout(self.server.limits.read_timeout_s)
        self.send_response(status)
        for name, values in headers.items():
            if name.lower() in ("content-length", "connection"):
                continue
            for value in [values] if isinstance(values, str) else values:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drain(self) -> None:
        """Read what the client still sends for a moment after answering before its body (413, 404…),
        so the close does not reset the connection before the client has read that answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + min(2.0, self.server.limits.read_timeout_s)
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("http %s %s", self.client_address[0], format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The stdlib's only errors here are a request line or headers it cannot read, and timeouts.
        logger.info("dropped a request from %s: %s", self.client_address[0], format % args)


class _BoundedHTTPServer(ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``limits.max_connections`` of them; one more gets 503 at once."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoint: SlackEndpoint, limits: EndpointLimits) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, _EventsRequestHandler)

    @property
    def active_connections(self) -> int:
        with self._active_lock:
            return self._active

    def _count(self, delta: int) -> None:
        with self._active_lock:
            self._active += delta

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            logger.warning("busy: %d connections open, answered %s with 503", self.limits.max_connections, client_address[0])
            try:
                request.setblocking(False)  # the accept loop never waits on a client
                request.send(_BUSY_RESPONSE)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self._count(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._count(-1)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count(-1)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away mid-response: nothing to fix here
            logger.info("connection from %s ended: %s", client_address[0], exc)
        else:
            logger.exception("unexpected error serving %s", client_address[0])


class EventsServer:
    """The HTTP Events API endpoint: the Bolt app behind a bounded, threaded stdlib HTTP server.

    Every request must be complete within ``read_timeout_s`` (headers and body) and at most
    ``max_request_bytes`` long (checked from Content-Length before reading: 413); at most
    ``max_connections`` are served at once (503 beyond). The signature and timestamp are
    checked on the raw body before anything parses it (401, no parsing); a signed body that
    cannot be read is a 400. Put it behind an HTTPS reverse proxy (Slack only calls https://
    URLs). Use ``port=0`` for a free port (tests), then read :attr:`port`.

    Args:
        app: The Bolt app from :func:`create_app`.
        signing_secret: The secret requests are signed with; default the one ``app`` was built with.
    """

    def __init__(
        self,
        app: App,
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        path: str = "/slack/events",
        max_request_bytes: int = MAX_REQUEST_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        signing_secret: str | None = None,
    ) -> None:
        # Bolt keeps the secret it verifies with as App._signing_secret (no public accessor); the
        # same one is used here, and a missing one fails closed rather than serving unverified.
        secret = signing_secret or getattr(app, "_signing_secret", None)
        if not isinstance(secret, str) or not secret.strip():
            raise SlackConfigError("the HTTP Events API needs the app's signing secret (SLACK_SIGNING_SECRET)")
        self.path = path
        self.limits = EndpointLimits(max_request_bytes, read_timeout_s, max_connections)
        endpoint = SlackEndpoint(app, path=path, signing_secret=secret, max_request_bytes=max_request_bytes)
        self._server = _BoundedHTTPServer((host, port), endpoint, self.limits)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}{self.path}"

    @property
    def active_connections(self) -> int:
        """Connections being served now (each holds a thread until it is answered or times out)."""
        return self._server.active_connections

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C in the CLI)."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def start(self) -> "EventsServer":
        """Serve in a background thread (for tests and embedding); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="slack-events", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "EventsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def socket_mode_handler(app: App, settings: SlackSettings) -> SocketModeHandler:
    """Bolt's Socket Mode connection for ``app`` (``.connect()`` / ``.close()``, or ``.start()`` to block)."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    settings.check("socket")
    app_token = settings.app_token.get_secret_value() if settings.app_token else ""
    return SocketModeHandler(app, app_token)


def run_socket_mode(app: App, settings: SlackSettings) -> None:
    """Connect to Slack over Socket Mode and answer until interrupted (no public URL needed)."""
    socket_mode_handler(app, settings).start()
