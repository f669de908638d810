"""Tools on a tiny hand-made shop with fake models: results, unknown ids, masking, bounds, citations."""

from __future__ import annotations

import json

import pytest

from test_agent_support import EMAIL, IP, PHONE, FakeModel, tiny_context
from shopsight.tools import default_registry, result_json
from shopsight.tools.compare_users import compare_users
from shopsight.tools.get_user_history import get_user_history
from shopsight.tools.get_user_profile import get_user_profile
from shopsight.tools.segment_summary import segment_summary
from shopsight.tools.top_users import top_users

REGISTRY = default_registry()


def call_tool(ctx, name, args):
    return REGISTRY.run(ctx, name, args)


def langchain_tools(ctx):
    return REGISTRY.langchain_tools(ctx)


@pytest.fixture
def ctx(workspace):
    return tiny_context(workspace)


def test_every_tool_has_a_docstring_with_use_when_and_args():
    for tool in (spec.func for spec in REGISTRY):
        doc = tool.__doc__ or ""
        assert "Use " in doc, tool.__name__
        params = [p for p in tool.__code__.co_varnames[1 : tool.__code__.co_argcount + tool.__code__.co_kwonlyargcount]]
        for p in params:
            assert f"{p}:" in doc, f"{tool.__name__} does not document {p}"


def test_langchain_tools_hide_the_context(ctx):
    tools = langchain_tools(ctx)
    assert [t.name for t in tools] == list(REGISTRY.names)
    for t in tools:
        assert "ctx" not in t.args
    churn = next(t for t in tools if t.name == "predict_churn")
    assert set(churn.args) == {"user_id"}
    assert json.loads(churn.invoke({"user_id": "u00003"}))["probability"] == 0.881


def test_profile_reports_the_users_facts(ctx):
    p = get_user_profile(ctx, "u00001")
    assert (p["sessions"], p["orders"], p["revenue"], p["top_category"]) == (3, 1, 120, "electronics")
    assert p["citations"]["sessions"] == ["u00001-s1", "u00001-s2", "u00001-s3"]


@pytest.mark.parametrize("name,args", [
    ("get_user_profile", {"user_id": "u99999"}),
    ("get_user_history", {"user_id": "u99999"}),
    ("predict_intent", {"user_id": "u99999"}),
    ("predict_churn", {"user_id": "u99999"}),
    ("score_risk", {"user_id": "u99999"}),
])
def test_unknown_user_is_a_result_not_an_exception(ctx, name, args):
    r = call_tool(ctx, name, args)
    assert r["error"] == "no such user" and r["user_id"] == "u99999" and "u00001" in r["hint"]


def test_unknown_order_is_a_result(ctx):
    assert call_tool(ctx, "score_risk", {"order_id": "o999999"})["error"] == "no such order"


def test_order_risk_uses_the_order(ctx):
    r = call_tool(ctx, "score_risk", {"order_id": "o000102"})
    assert r["order_id"] == "o000102" and r["user_id"] == "u00002" and r["model"] == "risk@v1"


def test_bad_arguments_from_the_model_come_back_as_a_result(ctx):
    r = call_tool(ctx, "predict_churn", {"customer": "u00001"})
    assert r["error"].startswith("bad arguments for predict_churn")


def test_model_result_is_compact_and_cites_sessions_and_model(ctx):
    r = call_tool(ctx, "predict_churn", {"user_id": "u00001"})
    assert r["probability"] == 0.212 and r["model"] == "churn@v1"
    assert len(r["factors"]) <= 3 and set(r["factors"][0]) == {"name", "value", "direction"}
    assert r["citations"] == {"sessions": ["u00001-s3"], "model": "churn@v1"}


def test_personal_data_is_masked_in_every_result(ctx):
    ctx.models["churn"] = FakeModel("churn")
    texts = [result_json(call_tool(ctx, n, a)) for n, a in [
        ("get_user_history", {"user_id": "u00001"}),
        ("predict_churn", {"user_id": "u00001"}),
        ("score_risk", {"user_id": "u00002"}),
        ("get_user_profile", {"user_id": "u00001"}),
    ]]
    blob = "\n".join(texts)
    assert EMAIL not in blob and PHONE not in blob and IP not in blob and "198.51.100.7" not in blob


def test_history_falls_back_to_events_without_an_index(ctx):
    ctx.index = None  # the workspace has no built index
    r = get_user_history(ctx, "u00002", since="2026-03-05")
    assert [s["session_id"] for s in r["sessions"]] == ["u00002-s2"]
    assert r["source"] == "events" and r["citations"]["sessions"] == ["u00002-s2"]


def test_history_limit_is_bounded(ctx):
    r = get_user_history(ctx, "u00001", limit=1)
    assert r["n_sessions"] == 1 and get_user_history(ctx, "u00001", limit=500)["n_sessions"] == 3


def test_top_users_ranks_by_probability_with_model_version(ctx):
    r = top_users(ctx, "churn", limit=2)
    assert [u["user_id"] for u in r["users"]] == ["u00003", "u00004"]
    assert r["citations"]["model"] == "churn@v1" and r["n_scored"] == 4


def test_top_users_filters_by_category_and_country(ctx):
    assert [u["user_id"] for u in top_users(ctx, "risk", category="shoes")["users"]] == ["u00002"]
    assert [u["user_id"] for u in top_users(ctx, "intent", country="US")["users"]] == ["u00004", "u00001"]


def test_top_users_rejects_an_unknown_metric(ctx):
    assert "unknown metric" in top_users(ctx, "fraudiness")["error"]


def test_top_users_without_a_trained_model_says_what_to_run(workspace):
    from shopsight.tools.context import ToolContext
    from test_agent_support import tiny_events

    events = tiny_events()
    workspace.save_events(events)
    r = top_users(ToolContext(workspace, events=events), "churn")
    assert r["error"] == "churn scores unavailable" and "shopsight train churn" in r["hint"]


def test_segment_summary_funnel_on_mobile(ctx):
    r = segment_summary(ctx, device="mobile")
    assert (r["sessions"], r["with_purchase"], r["users"], r["conversion_rate"], r["revenue"]) == (4, 1, 2, 0.25, 120)


def test_segment_summary_empty_segment(ctx):
    assert segment_summary(ctx, category="garden")["sessions"] == 0


def test_compare_users_flags_unknown_ids(ctx):
    r = compare_users(ctx, ["u00001", "u00002", "u77777"])
    assert [u["user_id"] for u in r["users"]] == ["u00001", "u00002"] and r["unknown_users"] == ["u77777"]


def test_result_json_is_bounded():
    big = {"sessions": [{"session_id": f"s{i}", "summary": "x" * 200} for i in range(50)]}
    text = result_json(big)
    assert len(text) <= 2400 and json.loads(text)["truncated"] is True


def test_history_and_search_come_from_the_index_masked(ctx):
    r = get_user_history(ctx, "u00001")
    assert r["source"] == "index" and [s["session_id"] for s in r["sessions"]] == ["u00001-s3", "u00001-s2", "u00001-s1"]
    assert "[email]" in r["sessions"][1]["summary"] and EMAIL not in json.dumps(r)
    found = call_tool(ctx, "search_histories", {"query": "great headphones", "limit": 3})
    assert found["sessions"][0]["session_id"] == "u00001-s2" and EMAIL not in json.dumps(found)


def test_injection_text_is_returned_as_quoted_data_only(ctx):
    r = get_user_history(ctx, "u00002")
    assert any("IGNORE ALL PREVIOUS INSTRUCTIONS" in s["summary"] for s in r["sessions"])
    assert set(r) == {"user_id", "since", "until", "sessions", "n_sessions", "source", "citations"}
    assert r["citations"]["sessions"] == ["u00002-s2", "u00002-s1"]


def test_a_failing_tool_is_reported_to_the_model_not_hidden(ctx, caplog):
    class Broken(FakeModel):
        def explain(self, events, user_id):
            raise IndexError("boom")

    ctx.models["churn"] = Broken("churn")
    churn = next(t for t in langchain_tools(ctx) if t.name == "predict_churn")
    r = json.loads(churn.invoke({"user_id": "u00001"}))
    assert r["error"] == "predict_churn failed" and "IndexError: boom" in r["detail"]
    assert "boom" in caplog.text  # logged with its traceback
    ctx.raise_errors = True
    with pytest.raises(IndexError):
        churn.invoke({"user_id": "u00001"})


def test_only_rules_that_fired_are_given_as_reasons():
    from shopsight.tools.explain import compact_explanation as _compact_explanation

    raw = {"model": "churn@v1", "user_id": "u00001", "probability": 0.71234, "factors": [],
           "rules": [{"name": "never_purchased", "fired": False, "value": 3},
                     {"name": "no_purchase_within_horizon", "fired": True, "value": 56.0},
                     "refund_rate"],
           "evidence": []}
    out = _compact_explanation(raw)
    assert out["rules"] == ["no_purchase_within_horizon", "refund_rate"] and out["probability"] == 0.712


def test_arguments_are_validated_against_the_tools_types(ctx):
    assert call_tool(ctx, "top_users", {"metric": "churn", "limit": "2"})["users"][1]["user_id"] == "u00004"  # "2" → 2
    bad = call_tool(ctx, "top_users", {"metric": "fraudiness"})
    assert bad["error"].startswith("bad arguments for top_users") and "'churn', 'risk' or 'intent'" in bad["error"]
    assert call_tool(ctx, "no_such_tool", {})["error"] == "no tool named 'no_such_tool'"


@pytest.mark.parametrize("since,until,expected", [
    ("2026-03-09", "2026-03-09", ["u00002-s2"]),        # one whole day: until includes it
    ("2026-03-09", None, ["u00002-s2"]),
    (None, "2026-03-08", ["u00002-s1"]),                 # the day before the second session
    ("2026-03-02", "2026-03-02T10:00:00", ["u00002-s1"]),  # a time: up to and including that instant
    ("2026-03-02T10:00:01", "2026-03-08", []),
])
def test_one_date_range_meaning_with_and_without_the_index(ctx, since, until, expected):
    with_index = get_user_history(ctx, "u00002", since=since, until=until)
    ctx.index = None
    without = get_user_history(ctx, "u00002", since=since, until=until)
    assert [s["session_id"] for s in with_index["sessions"]] == expected
    assert [s["session_id"] for s in without["sessions"]] == expected


def test_an_empty_or_malformed_date_range_is_an_error_the_model_can_act_on(ctx):
    empty = call_tool(ctx, "segment_summary", {"since": "2026-03-10", "until": "2026-03-01"})
    assert "the date range is empty" in empty["error"]
    bad = call_tool(ctx, "get_user_history", {"user_id": "u00001", "since": "last tuesday"})
    assert "is not a date: use YYYY-MM-DD" in bad["error"]


@pytest.mark.parametrize("p,digits,shown", [(0.734, 1, "73.4%"), (0.003333, 1, "0.33%"), (0.0004, 1, "0.04%"),
                                             (0.0, 1, "0.0%"), (0.674, 0, "67%"), (0.003333, 0, "0%")])
def test_a_small_share_keeps_the_digits_that_make_it_right(p, digits, shown):
    from shopsight.tools.words import pct

    assert pct(p, digits) == shown


@pytest.mark.parametrize("method,words", [("visa_1317", "a Visa card ending 1317"), ("apple_pay", "Apple Pay"), ("paypal", "paypal")])
def test_payment_methods_are_said_in_words(method, words):
    from shopsight.tools.words import payment_words

    assert payment_words(method) == words


def test_an_evidence_session_is_said_from_its_counts():
    from shopsight.tools.explain import session_activity

    e = {"events": {"view": 5, "add_to_cart": 1, "login": 1}, "categories": ["Beauty", "Home"], "rules": ["bot_velocity"],
         "detail": "bot_velocity: 5 view, 1 add_to_cart, 1 login"}
    assert session_activity(e) == "flagged by the bot velocity rule: 5 views, 1 cart add, 1 login in Beauty, Home"
    order = {"events": {"purchase": 2}, "order_id": "o000028", "amount": 429.98, "lines": 2}
    assert session_activity(order) == "order o000028 of $429.98 (2 lines); the session: 2 purchases"
    assert session_activity({"detail": "2 view"}) == "2 views"  # an older result without counts
