"""Risk alerts in Slack: each decision at ``review`` or above posted to ``SHOPSIGHT_SLACK_ALERT_CHANNEL`` as a
Block Kit message with its reasons and two buttons, "Confirm fraud" and "False alarm"; a click records
the analyst's label in the workspace (``behavior.decisions.record_label``), which the next risk training
reads, and the message is updated to say who labelled it.

``shopsight watch`` posts (:class:`RiskAlerter`); the Slack app (``shopsight slack``) receives the clicks
(:func:`register_label_actions`). Texts are masked before they leave (``behavior.privacy``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping, Sequence

from shopsight.behavior.privacy import mask_text_bounded
from shopsight.integrations.slack_blocks import escape_mrkdwn

log = logging.getLogger(__name__)

ALERT_DECISIONS = ("review", "block")
CONFIRM_ACTION = "risk_confirm_fraud"
FALSE_ALARM_ACTION = "risk_false_alarm"
ACTION_LABELS = {CONFIRM_ACTION: "fraud", FALSE_ALARM_ACTION: "false_alarm"}
MAX_REASONS = 5
REASON_CHARS = 400
_ICON = {"block": ":no_entry:", "review": ":warning:"}


def _masked(text: Any, limit: int = REASON_CHARS) -> str:
    return escape_mrkdwn(mask_text_bounded(str(text), limit))


def _subject(d: Mapping[str, Any]) -> str:
    return f"order {d['order_id']}" if d.get("order_id") else f"user {d['user_id']}"


def alert_text(d: Mapping[str, Any]) -> str:
    """The notification's plain text (what a phone shows): decision, subject, score."""
    return f"{str(d['decision']).upper()}: {_subject(d)} (user {d['user_id']}), fraud probability {float(d['score']):.1%}, {d.get('model')}"


def alert_blocks(d: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Block Kit message of one decision: what was decided and about whom, the reasons, the buttons."""
    reasons = d.get("reasons") or []
    if isinstance(reasons, str):
        reasons = json.loads(reasons)
    forced = d.get("forced_by")
    if isinstance(forced, str):
        forced = json.loads(forced)
    head = (f"{_ICON.get(str(d['decision']), '')} *{str(d['decision']).upper()}* {_subject(d)} — user {d['user_id']}, "
            f"fraud probability *{float(d['score']):.1%}*")
    how = f"forced by the {forced['name'].replace('_', ' ')} rule" if forced else (
        f"threshold {float(d['threshold']):.1%}" + (f", validation precision {float(d['expected_precision']):.0%}"
                                                     if d.get("expected_precision") is not None else "")
        if d.get("threshold") is not None else "model")
    value = json.dumps({"order_id": d.get("order_id"), "user_id": d["user_id"], "decision": d["decision"], "model": d.get("model")})
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head.strip()}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Why*\n" + "\n".join(f"• {_masked(r)}" for r in reasons[:MAX_REASONS])
                                     if reasons else "*Why*\n• (no reason recorded)"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _masked(f"{how} · {d.get('model')} · decided {d.get('decided_at')} · batch {d.get('batch')}")}]},
        {"type": "actions", "block_id": "risk_label", "elements": [
            {"type": "button", "action_id": CONFIRM_ACTION, "style": "danger", "text": {"type": "plain_text", "text": "Confirm fraud"}, "value": value},
            {"type": "button", "action_id": FALSE_ALARM_ACTION, "text": {"type": "plain_text", "text": "False alarm"}, "value": value},
        ]},
    ]
    return blocks


def labelled_blocks(blocks: Sequence[Mapping[str, Any]], *, label: str, user: str) -> list[dict[str, Any]]:
    """The alert after a click: the buttons replaced by who labelled it, and how."""
    said = "confirmed fraud" if label == "fraud" else "marked a false alarm"
    kept = [dict(b) for b in blocks if b.get("type") != "actions"]
    return kept + [{"type": "context", "elements": [{"type": "mrkdwn", "text": f"<@{escape_mrkdwn(user)}> {said}; recorded for the next risk training."}]}]


class RiskAlerter:
    """Posts the decisions at review or above to one channel; a failed post is logged and counted, the stream goes on.

    Args:
        client: a slack_sdk ``WebClient`` (``integrations.slack.web_client``).
        channel: the alert channel's id.
    """

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.posted = 0
        self.failed = 0

    def __call__(self, decisions: Sequence[Mapping[str, Any]]) -> None:
        from slack_sdk.errors import SlackApiError, SlackClientError

        for d in decisions:
            if d.get("decision") not in ALERT_DECISIONS:
                continue
            try:
                self.client.chat_postMessage(channel=self.channel, text=alert_text(d), blocks=alert_blocks(d), unfurl_links=False)
                self.posted += 1
            except (SlackApiError, SlackClientError, OSError):
                # The decision is on record in the workspace whatever Slack says; the alert is what failed.
                self.failed += 1
                log.exception("could not post the risk alert for %s to %s", _subject(d), self.channel)


def alerts_from_settings(settings: Any, ws: Any, slack: Any = None) -> Callable[[list[dict[str, Any]]], None] | None:
    """The alert poster the environment configures (SHOPSIGHT_SLACK_ALERT_CHANNEL with SLACK_BOT_TOKEN), or None.

    Raises:
        SlackConfigError: an alert channel is set without a bot token.
    """
    from shopsight.integrations.slack import SlackConfigError, SlackSettings, web_client

    slack = slack or SlackSettings.from_env()
    if not slack.alert_channel:
        return None
    if not slack.bot_token:
        raise SlackConfigError("SHOPSIGHT_SLACK_ALERT_CHANNEL is set but SLACK_BOT_TOKEN is not: set the bot token "
                               "(xoxb-…) to post alerts, or unset the channel (or pass --no-alerts). See docs/slack.md.")
    return RiskAlerter(web_client(slack), slack.alert_channel)


def register_label_actions(app: Any, ws: Any, policy: Any) -> None:
    """Record a click on an alert's buttons as the analyst's label, and update the alert to say so.

    Args:
        app: the Bolt app.
        ws: the workspace the labels go to.
        policy: the app's :class:`integrations.slack.AccessPolicy`: who may label (as who may ask).
    """
    from shopsight.behavior.decisions import record_label

    def on_click(ack: Callable[..., Any], body: dict, client: Any) -> None:
        ack()
        action = (body.get("actions") or [{}])[0]
        label = ACTION_LABELS.get(str(action.get("action_id")))
        user = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id", ""))
        message = body.get("message") or {}
        if label is None or not user:
            log.warning("an alert click without an action or a user was ignored")
            return
        if not policy.allows(channel=channel, user=user, is_dm=False):
            client.chat_postEphemeral(channel=channel, user=user, text="Sorry, only the analysts my administrators allowed can label alerts.")
            return
        try:
            value = json.loads(action.get("value") or "{}")
            user_id = str(value["user_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("an alert click carried an unreadable value: %.80r", action.get("value"))
            return
        record_label(ws, order_id=value.get("order_id"), user_id=user_id, label=label, analyst=user,
                     decision=value.get("decision"), model=value.get("model"), via="slack")
        if message.get("ts"):
            client.chat_update(channel=channel, ts=message["ts"], text=message.get("text") or "risk alert",
                               blocks=labelled_blocks(message.get("blocks") or [], label=label, user=user))

    app.action(CONFIRM_ACTION)(on_click)
    app.action(FALSE_ALARM_ACTION)(on_click)
