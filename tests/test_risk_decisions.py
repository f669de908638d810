"""The risk_decisions tool: what was blocked or reviewed and why, counts in a window, the false alarms; the router reaching it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from shopsight.behavior.decisions import record_label, write_decisions
from shopsight.tools import default_registry

REGISTRY = default_registry()


def _decision(order, user, decision, day, *, score=0.5, forced=None, reason="fraud probability 50.0% is at or above the review threshold 30.0%"):
    ts = pd.Timestamp(f"{day} 12:00", tz="UTC")
    return {"order_id": order, "user_id": user, "decision": decision, "score": score, "reasons": [reason],
            "rules": [], "forced_by": forced, "threshold": None if forced else 0.3, "expected_precision": None if forced else 0.8,
            "model": "risk@v2", "order_ts": ts, "landed_at": ts, "decided_at": ts, "source": "watch:test", "batch": 1}


@pytest.fixture
def ctx(workspace):
    from test_agent_support import tiny_context

    c = tiny_context(workspace)
    burst = {"name": "card_testing_burst", "forces": "block", "detail": "5 orders of at most 5 within 1 h", "evidence": ["o000201"]}
    write_decisions(workspace, 1, [
        _decision("o000201", "u00002", "block", "2026-03-10", score=0.04, forced=burst,
                  reason="the card testing burst rule forces block whatever the model says: 5 orders of at most 5 within 1 h"),
        _decision("o000202", "u00001", "review", "2026-03-10"),
        _decision("o000203", "u00003", "review", "2026-03-05"),
        _decision("o000204", "u00004", "allow", "2026-03-10", score=0.01),
        _decision(None, "u00004", "review", "2026-03-09", reason="the bot velocity rule forces review whatever the model says"),
    ])
    record_label(workspace, order_id="o000202", user_id="u00001", label="false_alarm", analyst="U1")
    record_label(workspace, order_id="o000201", user_id="u00002", label="fraud", analyst="U1")
    return c


def run(ctx, **args):
    r = REGISTRY.run(ctx, "risk_decisions", args)
    return r, REGISTRY.render("risk_decisions", args, r)


def test_what_was_blocked_in_a_window_and_why(ctx):
    r, text = run(ctx, decision="block", since="2026-03-10")
    assert r["n"] == 1 and r["decisions"][0]["order_id"] == "o000201" and r["decisions"][0]["forced_by"] == "card_testing_burst"
    assert r["by_decision"] == {"allow": 1, "review": 1, "block": 1}  # the window's decisions (the 9th and 5th are outside)
    assert "o000201" in text and "card testing burst rule forces block" in text and "risk@v2" in text
    facts = REGISTRY.key_facts("risk_decisions", {}, r, "what did we block today and why?")
    assert all(f.holds(text) for f in facts)
    assert not all(f.holds(text.replace("card testing burst", "a")) for f in facts)


def test_how_many_went_to_review_counts_orders_and_users(ctx):
    r, text = run(ctx, decision="review", since="2026-03-04")
    assert r["n"] == 3 and r["n_orders"] == 2
    assert text.startswith("Since 4 Mar 2026, risk control held for review 3 (2 orders and 1 user)")


def test_the_false_alarms_are_the_decisions_an_analyst_marked(ctx):
    r, text = run(ctx, label="false_alarm")
    assert [d["order_id"] for d in r["decisions"]] == ["o000202"] and r["decisions"][0]["analyst_label"] == "false_alarm"
    assert "marked as a false alarm" in text and "o000202" in text


def test_without_decisions_the_tool_says_how_to_make_them(workspace):
    from test_agent_support import tiny_context

    r, text = run(tiny_context(workspace))
    assert r["n"] == 0 and "shopsight watch" in text
    facts = REGISTRY.key_facts("risk_decisions", {}, r, "what did we block today?")
    assert all(f.holds(text) for f in facts)


def test_a_bad_date_comes_back_as_a_result(ctx):
    r = REGISTRY.run(ctx, "risk_decisions", {"since": "yesterdayish"})
    assert "error" in r and "not a date" in r["error"]


def test_personal_data_in_a_reason_is_masked(ctx, workspace):
    write_decisions(workspace, 2, [_decision("o000205", "u00001", "block", "2026-03-11", reason="mail jane.doe@example.com")])
    r, text = run(ctx, decision="block")
    assert "jane.doe@example.com" not in json.dumps(r) and "jane.doe@example.com" not in text


@pytest.mark.parametrize("question, args", [
    ("what did we block today and why?", {"decision": "block", "since": "2026-04-10"}),
    ("how many orders went to review this week?", {"decision": "review", "since": "2026-04-03", "subject": "orders"}),
    ("show the false alarms", {"decision": "flagged", "label": "false_alarm"}),
])
def test_the_arguments_come_from_the_question(question, args):
    from shopsight.agent.router import extract_entities
    from shopsight.tools.risk_decisions import _args
    from shopsight.tools.registry import ConversationState

    ent = extract_entities(question, anchor=pd.Timestamp("2026-04-10", tz="UTC"))
    assert _args(ent, ConversationState(), question) == args


@pytest.mark.slow
@pytest.mark.parametrize("question, expected", [
    ("what did we block today and why?", {"decision": "block", "since": "2026-04-10"}),
    ("how many orders went to review this week?", {"decision": "review", "since": "2026-04-03", "subject": "orders"}),
    ("show the false alarms", {"decision": "flagged", "label": "false_alarm"}),
    ("which orders were blocked yesterday?", {"decision": "block", "since": "2026-04-09", "until": "2026-04-09", "subject": "orders"}),
])
def test_the_router_reaches_the_tool(tmp_path, question, expected):
    from shopsight.agent.router import Router, default_embedder, load_router
    from shopsight.behavior.workspace import Workspace
    from test_agent_support import trained_router_into

    ws = Workspace(tmp_path / "ws")
    trained_router_into(ws)
    clf, version = load_router(ws)
    router = Router(clf, default_embedder(), version=version, anchor=pd.Timestamp("2026-04-10", tz="UTC"))
    assert [(c["name"], c["args"]) for c in router.plan(question).calls] == [("risk_decisions", expected)]


def test_an_order_says_what_risk_control_decided_when_it_arrived(workspace):
    from test_agent_support import tiny_context

    c = tiny_context(workspace)
    ev = workspace.load_events()
    order = str(ev.loc[ev["event"] == "purchase", "order_id"].dropna().iloc[0])
    buyer = str(ev.loc[ev["order_id"] == order, "user_id"].iloc[0])
    plain = REGISTRY.render("get_order", {"order_id": order}, REGISTRY.run(c, "get_order", {"order_id": order}))
    assert "risk control decided" not in plain  # nothing decided yet: nothing said
    write_decisions(workspace, 1, [_decision(order, buyer, "block", "2026-03-10", score=0.75,
                                             reason="fraud probability 75.0% is at or above the block threshold 57.5%")])
    r = REGISTRY.run(c, "get_order", {"order_id": order})
    text = REGISTRY.render("get_order", {"order_id": order}, r)
    assert r["decision"] == {"decision": "block", "score": 0.75, "model": "risk@v2",
                             "reason": "fraud probability 75.0% is at or above the block threshold 57.5%"}
    assert "When it arrived, risk control decided block (risk@v2: fraud probability 75.0% is at or above the block threshold 57.5%)" in text
    from shopsight.agent.guard import citations
    from shopsight.agent.types import ToolCall

    assert "risk@v2" in citations([ToolCall("get_order", {"order_id": order}, r)]).models


def test_a_decision_is_dated_by_the_event_time_it_judged_not_the_wall_clock(workspace):
    """A replay of May's events decided in December: "today" (the data's last day) finds the user, and says May."""
    from test_agent_support import tiny_context

    c = tiny_context(workspace)
    judged, ran = pd.Timestamp("2026-05-04 09:30", tz="UTC"), pd.Timestamp("2026-12-04 23:00", tz="UTC")
    user = _decision(None, "u00093", "review", "2026-05-04", reason="the bot velocity rule forces review whatever the model says")
    write_decisions(workspace, 1, [user | {"order_ts": None, "event_ts": judged, "landed_at": None, "decided_at": ran}])
    r, text = run(c, decision="review", since="2026-05-04", until="2026-05-04")
    assert r["n"] == 1 and r["decisions"][0]["user_id"] == "u00093" and r["decisions"][0]["day"] == "2026-05-04"
    assert "user u00093 on 4 May 2026" in text and "Dec 2026" not in text
    assert run(c, decision="review", since="2026-12-04")[0]["n"] == 0  # the day it ran is not the day it judged


def test_asked_about_orders_it_counts_orders_and_says_the_users_beside(ctx):
    r, text = run(ctx, decision="review", since="2026-03-04", subject="orders")
    assert r["n"] == 2 and r["n_other_subject"] == 1 and all(d["order_id"] for d in r["decisions"])
    assert text.startswith("Since 4 Mar 2026, risk control held for review 2 orders; 1 user was too, on their behaviour without an order")
    r, text = run(ctx, decision="review", since="2026-03-10", subject="orders")  # only the order of the 10th
    assert r["n"] == 1
    r, text = run(ctx, decision="review", since="2026-03-09", until="2026-03-09", subject="orders")
    assert r["n"] == 0 and r["n_other_subject"] == 1
    assert text.startswith("From 9 Mar 2026 to 9 Mar 2026, 0 orders were held for review by risk control; 1 user was too")
    facts = REGISTRY.key_facts("risk_decisions", {}, r, "how many orders went to review on 9 March?")
    assert all(f.holds(text) for f in facts)
    r, text = run(ctx, decision="review", since="2026-03-04", subject="users")
    assert r["n"] == 1 and r["n_other_subject"] == 2 and text.startswith("Since 4 Mar 2026, risk control held for review 1 user; 2 orders were too")
    assert "error" in REGISTRY.run(ctx, "risk_decisions", {"subject": "carts"})


def test_the_route_asks_for_orders_only_when_the_question_is_about_orders():
    from shopsight.tools.registry import ConversationState, Entities
    from shopsight.tools.risk_decisions import _args

    def args(q):
        return _args(Entities(), ConversationState(), q)

    assert args("how many orders went to review this week?")["subject"] == "orders"
    assert args("which orders did the watcher block or hold, and why?")["subject"] == "orders"
    assert "subject" not in args("which users did we block?")
    assert "subject" not in args("which accounts' orders were blocked?")
    assert "subject" not in args("what did risk control decide today?")
