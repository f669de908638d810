"""Risk alerts: review and block decisions posted to the alert channel as Block Kit with reasons and buttons;
a click records the analyst's label, which the next risk training reads. Against the fake Slack on loopback."""

from __future__ import annotations

import json
from typing import Iterator

import pandas as pd
import pytest
from fake_slack import FakeSlack, block_action, post_interaction

from shopsight.agent.types import Answer
from shopsight.behavior.decisions import analyst_user_labels, load_decisions, load_labels, record_label, with_analyst_labels
from shopsight.behavior.watch import StreamWatcher
from shopsight.integrations.risk_alerts import (
    CONFIRM_ACTION,
    FALSE_ALARM_ACTION,
    RiskAlerter,
    alert_blocks,
    alerts_from_settings,
)
from shopsight.integrations.slack import EventsServer, SlackConfigError, SlackSettings, create_app, web_client
from risk_workspace import trained_risk_workspace

SECRET = "test-signing-secret"
CHANNEL = "C_ALERTS"
COLUMNS = ["user_id", "ts", "event", "item_id", "category", "price", "quantity", "session_id", "device", "country",
           "payment", "order_id", "ip"]

DECISION = {
    "order_id": "o000123", "user_id": "u00042", "decision": "block", "score": 0.031, "model": "risk@v1", "batch": 7,
    "reasons": ["the card testing burst rule forces block whatever the model says: 5 orders of at most 5 within 1 h "
                "(evidence: o000119, o000123)", "mail jane.doe@example.com about it"],
    "forced_by": {"name": "card_testing_burst", "forces": "block", "detail": "5 orders", "evidence": ["o000119"]},
    "threshold": None, "expected_precision": None, "decided_at": "2026-03-01T10:00:00+00:00",
}


class NoAgent:
    def ask(self, question: str, *, conversation_id: str) -> Answer:
        return Answer(question=question, answer="-", conversation_id=conversation_id)


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def _settings(fake: FakeSlack, **kw) -> SlackSettings:
    return SlackSettings(bot_token="xoxb-test-token", app_token=None, signing_secret=SECRET, allowed_channels=[],
                         allowed_users=kw.pop("allowed_users", []), api_url=fake.api_url, max_charts=0,
                         alert_channel=CHANNEL, **kw)


def test_an_alert_carries_the_decision_the_reasons_masked_and_two_buttons():
    blocks = alert_blocks(DECISION)
    text = json.dumps(blocks)
    assert "*BLOCK* order o000123" in blocks[0]["text"]["text"] and "3.1%" in blocks[0]["text"]["text"]
    assert "card testing burst rule forces block" in blocks[1]["text"]["text"]
    assert "jane.doe@example.com" not in text  # personal data masked before it leaves
    assert "forced by the card testing burst rule" in blocks[2]["elements"][0]["text"]
    buttons = blocks[3]["elements"]
    assert [b["action_id"] for b in buttons] == [CONFIRM_ACTION, FALSE_ALARM_ACTION]
    assert json.loads(buttons[0]["value"]) == {"order_id": "o000123", "user_id": "u00042", "decision": "block", "model": "risk@v1"}


def test_the_alerter_posts_only_review_and_block_to_the_alert_channel(fake_slack):
    alerter = RiskAlerter(web_client(_settings(fake_slack)), CHANNEL)
    alerter([DECISION, {**DECISION, "order_id": "o1", "decision": "allow"}, {**DECISION, "order_id": "o2", "decision": "review",
                                                                              "forced_by": None, "threshold": 0.3, "expected_precision": 0.8}])
    posts = fake_slack.calls_to("chat.postMessage")
    assert [p["channel"] for p in posts] == [CHANNEL, CHANNEL] and alerter.posted == 2
    review = json.dumps(posts[1]["blocks"])
    assert "REVIEW" in review and "validation precision 80%" in review
    fake_slack.fail_next("chat.postMessage", status=500, retry_after=None, error="internal_error")
    alerter([DECISION])  # Slack failing loses the alert, not the stream: logged and counted
    assert alerter.failed == 1


def test_alerts_need_a_bot_token_when_the_channel_is_set(fake_slack):
    assert alerts_from_settings(None, None, slack=_settings(fake_slack, )) is not None
    no_channel = SlackSettings(bot_token="xoxb-t", api_url=fake_slack.api_url, alert_channel=None)
    assert alerts_from_settings(None, None, slack=no_channel) is None
    with pytest.raises(SlackConfigError, match="SLACK_BOT_TOKEN"):
        alerts_from_settings(None, None, slack=SlackSettings(bot_token=None, alert_channel=CHANNEL))


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A workspace that watched three days of its shop with a review threshold low enough to alert, and the alerts sent."""
    from shopsight.behavior.models.decision import risk_card, set_thresholds

    root = tmp_path_factory.mktemp("alerts")
    ws = trained_risk_workspace(root / "ws")
    events = ws.load_events()
    cut = events["ts"].max() - pd.Timedelta(days=3)
    ws.save_events(events[events["ts"] < cut])
    set_thresholds(ws, risk_card(ws), review=0.02, block=0.5)
    stream = root / "events.csv"
    events[events["ts"] >= cut].sort_values("ts")[COLUMNS].to_csv(stream, index=False)
    fake = FakeSlack().start()
    try:
        alerter = RiskAlerter(web_client(_settings(fake)), CHANNEL)
        StreamWatcher(ws, stream, on_decisions=alerter).poll()
        posts = fake.calls_to("chat.postMessage")
    finally:
        fake.stop()
    return ws, posts


def test_watch_posts_one_alert_per_decision_at_review_or_above(streamed):
    ws, posts = streamed
    d = load_decisions(ws)
    flagged = d[d["decision"].isin(["review", "block"])]
    assert len(flagged) >= 1 and len(posts) == len(flagged)
    subjects = {p["text"].split(" (user")[0] for p in posts}
    want = {f"{r.decision.upper()}: " + (f"order {r.order_id}" if pd.notna(r.order_id) else f"user {r.user_id}") for r in flagged.itertuples()}
    assert subjects == want


def _click(fake: FakeSlack, ws, settings: SlackSettings, payload: dict) -> None:
    server = EventsServer(create_app(settings, NoAgent(), mode="http", workspace=ws), host="127.0.0.1", port=0).start()
    try:
        status, _ = post_interaction(server.url, SECRET, payload)
        assert status == 200
        fake.wait_for(lambda f: f.calls_to("chat.update") or f.calls_to("chat.postEphemeral"))
    finally:
        server.shutdown()


def test_a_click_on_confirm_fraud_records_the_label_and_updates_the_alert(fake_slack, streamed, tmp_path):
    import shutil

    ws_src, posts = streamed
    shutil.copytree(ws_src.root, tmp_path / "ws")
    from shopsight.behavior.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    post = posts[0]
    value = post["blocks"][3]["elements"][0]["value"]
    message = {"ts": "1700000009.000100", "text": post["text"], "blocks": post["blocks"]}
    _click(fake_slack, ws, _settings(fake_slack), block_action(CONFIRM_ACTION, value, user="UANALYST", message=message))
    labels = load_labels(ws)
    assert len(labels) == 1
    row = labels.iloc[0]
    assert (row["label"], row["analyst"], row["user_id"]) == ("fraud", "UANALYST", json.loads(value)["user_id"])
    update = fake_slack.calls_to("chat.update")[0]
    assert update["ts"] == "1700000009.000100" and update["channel"] == CHANNEL
    blocks = json.dumps(update["blocks"])
    assert "actions" not in [b["type"] for b in update["blocks"]] and "<@UANALYST> confirmed fraud" in blocks


def test_a_click_by_someone_not_allowed_records_nothing(fake_slack, tmp_path):
    from shopsight.behavior.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    value = json.dumps({"order_id": "o1", "user_id": "u1", "decision": "review", "model": "risk@v1"})
    _click(fake_slack, ws, _settings(fake_slack, allowed_users=["UBOSS"]), block_action(FALSE_ALARM_ACTION, value, user="UOTHER"))
    assert load_labels(ws).empty and fake_slack.calls_to("chat.postEphemeral")


def test_the_next_risk_training_reads_the_analysts_labels(tmp_path):
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings

    ws = trained_risk_workspace(tmp_path / "ws")
    truth = ws.load_labels("users")
    honest = truth.loc[~truth["is_fraud"], "user_id"].astype(str).tolist()[:3]
    fraud = truth.loc[truth["is_fraud"], "user_id"].astype(str).tolist()[0]
    for u in honest[:2]:
        record_label(ws, order_id=None, user_id=u, label="fraud", analyst="U1")
    record_label(ws, order_id=None, user_id=fraud, label="false_alarm", analyst="U1")
    record_label(ws, order_id=None, user_id=honest[1], label="false_alarm", analyst="U2")  # the latest word counts
    merged = with_analyst_labels(truth, analyst_user_labels(ws)).set_index("user_id")["is_fraud"]
    assert merged[honest[0]] and not merged[honest[1]] and not merged[fraud]
    tiny = TrainSettings(epochs=2, patience=1, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=30.0)
    card = train_model(ws, "risk", settings=tiny, ae_epochs=5)["card"]
    assert card["analyst_labels"] == {"users": 3, "fraud": 1, "false_alarm": 2}
    assert card["split"]["train_frauds"] + card["split"]["test_frauds"] == int(merged.sum())
