"""ShopSight as a Slack app: answers @mentions and direct messages, one conversation per thread.

The app is Bolt for Python. It acknowledges each event at once, posts "Looking into it…"
in the thread, asks the injected :class:`Answerer` (the agent), then replaces that message
with the answer in Block Kit and uploads a chart when one helps. It runs over Socket Mode
(``SLACK_APP_TOKEN``) or the HTTP Events API (``SLACK_SIGNING_SECRET``, every request's
signature and timestamp checked by Bolt).

Usage::

    settings = SlackSettings.from_env()
    app = create_app(settings, answerer=my_agent, mode="http")
    EventsServer(app, host="127.0.0.1", port=3000).serve_forever()
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Mapping, Protocol, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from slack_sdk.errors import SlackApiError, SlackClientError

from agent.types import Answer

if TYPE_CHECKING:  # Bolt is imported when an app is built, not when this module is
    from slack_bolt import App
    from slack_bolt.adapter.socket_mode import SocketModeHandler
    from slack_sdk import WebClient

from integrations import slack_blocks
from integrations.slack_charts import Chart, charts_for_tool_calls

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
# The entry in SHOPSIGHT_SLACK_ALLOWED_CHANNELS that lets direct messages through.
DM = "dm"
# How many event ids are remembered to drop Slack's redeliveries; Slack retries within
# minutes, so a few thousand ids cover hours of traffic at team scale.
DEDUPE_CAPACITY = 10_000
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


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
    answered at once), SHOPSIGHT_SLACK_MAX_CHARTS, SHOPSIGHT_SLACK_API_URL (a proxy or a test
    server in place of https://slack.com/api/).
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    allowed_channels: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="SHOPSIGHT_SLACK_ALLOWED_CHANNELS")
    allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="SHOPSIGHT_SLACK_ALLOWED_USERS")
    workers: int = Field(default=4, ge=1, le=32, alias="SHOPSIGHT_SLACK_WORKERS")
    max_charts: int = Field(default=2, ge=0, le=5, alias="SHOPSIGHT_SLACK_MAX_CHARTS")
    api_url: str = Field(default=DEFAULT_API_URL, alias="SHOPSIGHT_SLACK_API_URL")

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


class SlackAnalyst:
    """Answers one message in its thread: access check, placeholder, agent, Block Kit answer, charts."""

    def __init__(self, answerer: Answerer, policy: AccessPolicy, *, max_charts: int = 2) -> None:
        self._answerer = answerer
        self._policy = policy
        self._max_charts = max_charts
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


def _incoming(event: Mapping[str, Any], body: Mapping[str, Any], context: Any, *, is_dm: bool) -> IncomingMessage:
    return IncomingMessage(
        team_id=str(body.get("team_id") or event.get("team") or "T?"),
        channel=str(event.get("channel")),
        user=str(event.get("user")),
        text=str(event.get("text") or ""),
        ts=str(event.get("ts")),
        thread_ts=str(event["thread_ts"]) if event.get("thread_ts") else None,
        is_dm=is_dm,
        bot_user_id=context.get("bot_user_id"),
    )


def create_app(settings: SlackSettings, answerer: Answerer, *, mode: Literal["socket", "http"] | None = None) -> App:
    """The Bolt app answering ``app_mention`` events and direct messages with ``answerer``.

    Args:
        settings: Tokens, secrets, allowed channels and users, worker count.
        answerer: The agent (see :class:`Answerer`).
        mode: "http" (Events API: the signing secret is required) or "socket"; default from settings.

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
            name="shopsight",
        )
    except BoltError as exc:
        raise SlackConfigError(f"Slack refused the bot token (SLACK_BOT_TOKEN): {exc}. See docs/slack.md.") from exc
    analyst = SlackAnalyst(answerer, settings.access_policy(), max_charts=settings.max_charts)
    app.use(_answer_each_event_once(EventDeduper()))

    @app.event("app_mention")
    def answer_mention(event: dict, body: dict, client: Any, context: Any) -> None:
        analyst.answer(client, _incoming(event, body, context, is_dm=False))

    @app.event("message")
    def answer_direct_message(event: dict, body: dict, client: Any, context: Any) -> None:
        # Channel messages arrive as app_mention; edits, joins and other bots' posts are not questions.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        analyst.answer(client, _incoming(event, body, context, is_dm=True))

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("http %s", format % args)


class EventsServer:
    """The HTTP Events API endpoint: the Bolt app behind a threaded stdlib WSGI server.

    Put it behind an HTTPS reverse proxy (Slack only calls https:// URLs). Use ``port=0``
    for a free port (tests), then read :attr:`port`.
    """

    def __init__(self, app: App, *, host: str = "127.0.0.1", port: int = 3000, path: str = "/slack/events") -> None:
        from slack_bolt.adapter.wsgi import SlackRequestHandler

        self.path = path
        self._server = make_server(
            host, port, SlackRequestHandler(app, path=path), server_class=_ThreadingWSGIServer,
            handler_class=_QuietRequestHandler,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}{self.path}"

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
