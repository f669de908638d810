"""get_order: one order's items, amount, payment, device, status and risk, and how questions reach it."""

from __future__ import annotations

import pandas as pd
import pytest

from shopsight.agent.guard import check_grounding
from shopsight.agent.types import ToolCall
from test_agent_support import tiny_context
from shopsight.tools import default_registry

REGISTRY = default_registry()


@pytest.fixture
def ctx(workspace):
    return tiny_context(workspace)


def test_an_order_reports_its_items_amount_channel_and_risk(ctx):
    r = REGISTRY.run(ctx, "get_order", {"order_id": "o000102"})
    assert (r["user_id"], r["day"], r["session_id"]) == ("u00002", "2026-03-09", "u00002-s2")
    assert r["items"] == [{"item_id": "i3", "category": "shoes", "price": 80, "quantity": 2}]
    assert (r["n_items"], r["amount"], r["refunded"]) == (2, 160, False)
    assert (r["device"], r["country"]) == ("desktop", "DE") and "payment" not in r  # the tiny shop records none
    assert r["risk_probability"] == 0.58 and r["citations"] == {"sessions": ["u00002-s2"], "model": "risk@v1"}


def test_an_unknown_order_is_a_result_the_model_can_act_on(ctx):
    r = REGISTRY.run(ctx, "get_order", {"order_id": "o999999"})
    assert r["error"] == "no such order" and r["order_id"] == "o999999"


def test_without_a_risk_model_the_order_still_answers(workspace):
    from shopsight.tools.context import ToolContext
    from test_agent_support import tiny_events

    events = tiny_events()
    workspace.save_events(events)
    r = REGISTRY.run(ToolContext(workspace, events=events), "get_order", {"order_id": "o000101"})
    assert r["amount"] == 120 and "risk_probability" not in r and "model" not in r["citations"]


def test_the_rendered_order_is_grounded_and_states_its_key_facts(ctx):
    call = ToolCall("get_order", {"order_id": "o000102"}, REGISTRY.run(ctx, "get_order", {"order_id": "o000102"}))
    text = REGISTRY.render(call.name, call.args, call.result)
    assert text.startswith("Order o000102 was placed by user u00002 on 9 Mar 2026 for $160.00") and "2 items" in text
    assert check_grounding(text, [call], "what was in order o000102?").ok
    verdict = check_grounding("The order looks fine.", [call], "what was in order o000102?")
    assert verdict.missing == ["order o000102", "amount 160"]


def test_a_follow_up_after_an_order_is_about_that_order():
    state = REGISTRY.remember([ToolCall("get_order", {"order_id": "o000102"}, {"user_id": "u00002", "amount": 160})])
    assert state.last_order_id == "o000102" and state.last_user_ids == []


@pytest.mark.slow
@pytest.mark.parametrize("question,expected", [
    ("What was in order o000123?", [("get_order", {"order_id": "o000123"})]),
    ("How was order 123 paid?", [("get_order", {"order_id": "o000123"})]),
    ("Is order o000123 fraudulent?", [("score_risk", {"order_id": "o000123"})]),
])
def test_the_router_reaches_the_order_and_keeps_fraud_questions_on_risk(workspace, question, expected):
    from shopsight.agent.router import Router, default_embedder, load_router
    from test_agent_support import trained_router_into

    trained_router_into(workspace)
    clf, version = load_router(workspace)
    router = Router(clf, default_embedder(), version=version, anchor=pd.Timestamp("2026-04-10", tz="UTC"),
                    order_exists={"o000123"}.__contains__)
    assert [(c["name"], c["args"]) for c in router.plan(question).calls] == expected
