"""query_metric: analyst questions in words, through the router and the tool, against plain pandas.

The small demo workspace (300 users, 60 days, churn and risk trained) is the data; each question
is planned by the trained router, run through the registry and rendered, and its numbers are
checked against an independent pandas computation from the raw events and score tables. The
rest: bad specs come back as errors, the model's view is bounded and has no SQL, the answer
reads well, the claims steer misfiled questions, the charts render, the CLI prints and saves.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.workspace import Workspace
from test_agent_support import tiny_context, trained_router_into
from shopsight.tools import ToolContext, default_registry
from shopsight.tools.registry import MAX_RESULT_CHARS, ConversationState, Entities, result_json

REGISTRY = default_registry()
STEP_EVENT = {"view": "view", "cart": "add_to_cart", "checkout": "checkout", "purchase": "purchase", "refund": "refund"}
DEMO_SET = Path(__file__).resolve().parents[1] / "evals" / "demo.yaml"


# --- the shop, the router, and the independent reference ----------------------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings

    ws = Workspace(tmp_path_factory.mktemp("metric") / "ws")
    build_demo_workspace(ws, users=300, days=60, seed=7, progress=False)
    events = ws.load_events()
    train_model(ws, "churn", events=events, settings=TrainSettings(epochs=3), horizon_days=14)
    train_model(ws, "risk", events=events, settings=TrainSettings(epochs=3))
    trained_router_into(ws)
    return ws


@pytest.fixture(scope="module")
def ctx(ws: Workspace) -> ToolContext:
    c = ToolContext(ws, raise_errors=True)  # a bug below the tool raises here instead of becoming a result
    yield c
    c.close()


@pytest.fixture(scope="module")
def router(ctx: ToolContext):
    from shopsight.agent.loop import make_router

    return make_router(ctx, REGISTRY)


@pytest.fixture(scope="module")
def shop(ws: Workspace) -> "Shop":
    return Shop(ws)


class Shop:
    """The definitions of behavior/query.py's docstring, recomputed with pandas from the raw files."""

    def __init__(self, ws: Workspace) -> None:
        from shopsight.behavior.models.registry import load_scores

        ev = ws.load_events()
        ev["ts"] = ev["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        self.ev = ev
        flags = pd.DataFrame({s: ev["event"].eq(e) for s, e in STEP_EVENT.items()})
        steps = pd.concat([ev[["session_id"]], flags], axis=1).groupby("session_id").any()
        self.sessions = ev.groupby("session_id").agg(user_id=("user_id", "first"), start=("ts", "min")).join(steps).reset_index()
        self.today = ev["ts"].max().normalize()  # the router's "today": the day of the last event
        self.scores = {m: load_scores(ws, m).set_index("user_id")["probability"] for m in ("churn", "risk")}
        card = json.loads((ws.models_dir / "risk" / "v1" / "card.json").read_text())
        self.risk_threshold = float(card["threshold"])
        self.methods = sorted(ev["payment"].dropna().str.replace(r"_\d{4}$", "", regex=True).unique())

    def since(self, days: int) -> pd.DataFrame:
        return self.sessions[self.sessions["start"] >= self.today - pd.Timedelta(days=days)]


@pytest.fixture(scope="module")
def ask(router, ctx):
    """Ask in words: the router's one call (which must be query_metric), its result and the rendered answer."""

    def asked(question: str) -> tuple[dict[str, Any], dict[str, Any], str]:
        plan = router.plan(question, ConversationState())
        assert [c["name"] for c in plan.calls] == ["query_metric"], (plan.label, plan.calls)
        args = plan.calls[0]["args"]
        result = REGISTRY.run(ctx, "query_metric", args)
        return args, result, REGISTRY.render("query_metric", args, result)

    return asked


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# --- the nine questions, in words --------------------------------------------------------------
@pytest.mark.slow
def test_overall_cart_to_purchase_rate(ask, shop):
    args, r, text = ask("What is the overall conversion rate from cart to purchase?")
    carted = shop.sessions[shop.sessions["cart"]]
    bought = int(carted["purchase"].sum())
    assert args == {"metric": "cart_to_purchase"}
    assert (r["total"]["numerator"], r["total"]["denominator"]) == (bought, len(carted))
    assert f"{pct(bought / len(carted))} of carted sessions — {bought:,} of {len(carted):,} — ended in a purchase" in text


@pytest.mark.slow
def test_users_who_bought_something_last_month(ask, shop):
    args, r, text = ask("How many users bought something last month?")
    window = shop.since(30)
    buyers, active = window.loc[window["purchase"], "user_id"].nunique(), window["user_id"].nunique()
    assert args["metric"] == "users" and args["did"] == ["purchase"] and args["since"] == f"{shop.today - pd.Timedelta(days=30):%Y-%m-%d}"
    assert (r["total"]["value"], r["population"]["units"]) == (buyers, active)
    assert f"{buyers:,} of the {active:,} users with a session" in text and "bought something" in text


@pytest.mark.slow
def test_users_who_carted_but_never_checked_out(ask, shop):
    args, r, text = ask("Find users who added items to the cart but never checked out")
    per_user = shop.sessions.groupby("user_id")[["cart", "checkout"]].any()
    wanted = set(per_user.index[per_user["cart"] & ~per_user["checkout"]])
    assert (args["did"], args["did_not"]) == (["cart"], ["checkout"])
    assert r["total"]["value"] == len(wanted) and r["population"]["units"] == len(per_user)
    named = re.findall(r"\bu\d{5}\b", text)
    assert len(named) >= 5 and set(named) <= wanted  # the users it names are ones who did exactly that
    assert "added to the cart but never reached checkout" in text


@pytest.mark.slow
def test_category_with_the_highest_cart_abandonment(ask, shop):
    args, r, text = ask("which category has the highest cart abandonment?")
    item = shop.ev[shop.ev["category"].notna()]
    per = item.assign(cart=item["event"].eq("add_to_cart"), buy=item["event"].eq("purchase")).groupby(["session_id", "category"])[["cart", "buy"]].any()
    carted = per[per["cart"]]
    rate = (~carted["buy"]).groupby(level="category").mean()
    top = rate.idxmax()
    assert args == {"metric": "cart_abandonment", "group_by": "category"}
    assert r["rows"][0]["group"] == top and r["rows"][0]["value"] == pytest.approx(rate.max(), abs=1e-6)
    assert [row["value"] for row in r["rows"]] == sorted((row["value"] for row in r["rows"]), reverse=True)
    n = carted.loc[(slice(None), top), :]
    assert text.startswith(f"Cart abandonment is highest in {top}: {pct(rate.max())} of carted sessions ({int((~n['buy']).sum()):,} of {len(n):,})")


@pytest.mark.slow
def test_gift_card_share_of_high_risk_users_is_answered_with_the_methods_that_exist(ask, shop):
    args, r, text = ask("what share of high-risk users pay with a gift card?")
    assert "giftcard" not in {m.replace("_", "") for m in shop.methods}  # the demo shop takes no gift cards
    assert args["flagged"] == ["risk"] and args["focus"] == ["gift card"]
    assert r["field"] == "payment" and r["allowed"] == shop.methods
    assert "no such payment method" in text and all(m.replace("_", " ") in text for m in shop.methods)


@pytest.mark.slow
def test_share_of_high_risk_users_paying_with_a_method_they_use(ask, shop):
    high = set(shop.scores["risk"].index[shop.scores["risk"] >= shop.risk_threshold]) & set(shop.sessions["user_id"])
    paid = shop.ev[(shop.ev["event"] == "purchase") & shop.ev["payment"].notna() & shop.ev["user_id"].isin(high)]  # paid: bought with it
    users_by_method = paid.assign(m=paid["payment"].str.replace(r"_\d{4}$", "", regex=True)).groupby("m")["user_id"].nunique()
    method = users_by_method.idxmax()
    said = method.replace("_", " ").title()  # "Apple Pay", "Visa": as an analyst writes it
    args, r, text = ask(f"What share of high-risk users pay with {said}?")
    share = users_by_method[method] / len(high)
    assert r["rows"][0]["group"] == method and r["rows"][0]["value"] == users_by_method[method]
    assert r["total"]["value"] == len(high) and r["rows"][0]["share"] == pytest.approx(share)
    assert f"Of the {len(high):,} high-risk users" in text and f"{users_by_method[method]:,} ({pct(share)}) paid with {method.replace('_', ' ')}" in text
    assert f"at or above {round(shop.risk_threshold, 4):g} (the threshold on the risk@v1 model card)" in text


@pytest.mark.slow
def test_weekly_conversion_over_the_last_two_months(ask, shop):
    args, r, text = ask("how did weekly conversion change over the last two months?")
    window = shop.since(60)
    week = (window["start"].dt.normalize() - pd.to_timedelta(window["start"].dt.day_of_week, unit="D")).dt.strftime("%Y-%m-%d")
    ref = window.groupby(week)["purchase"].agg(["mean", "sum", "size"])
    assert args["metric"] == "session_conversion" and args["group_by"] == "week"
    got = {row["group"]: (row["value"], row["numerator"], row["denominator"]) for row in r["rows"]}
    assert list(got) == list(ref.index)  # every week, oldest first
    for g, (value, num, den) in got.items():
        assert value == pytest.approx(ref.loc[g, "mean"], abs=1e-6) and (num, den) == (ref.loc[g, "sum"], ref.loc[g, "size"])
    since, end = shop.today - pd.Timedelta(days=60), shop.ev["ts"].max()
    whole = [g for g in ref.index if pd.Timestamp(g) >= since and pd.Timestamp(g) + pd.Timedelta(days=7) <= end]  # weeks neither cuts
    first, last = ref.loc[whole[0], "mean"], ref.loc[whole[-1], "mean"]
    way = "up" if last > first else "down"
    assert f"went from {pct(first)} in the week of {whole[0]} to {pct(last)} in the week of {whole[-1]}: {way} {abs(last - first) * 100:.1f} points" in text


@pytest.mark.slow
def test_users_with_a_fraud_score_above_a_threshold(ask, shop):
    args, r, text = ask("how many users have a fraud score above 0.8?")
    risk = shop.scores["risk"]
    n = int((risk >= 0.8).sum())
    assert args == {"metric": "score_count_above", "model": "risk", "threshold": 0.8}
    assert (r["total"]["value"], r["total"]["denominator"]) == (n, len(risk))
    assert text.startswith(f"{n:,} of {len(risk):,} scored users ({pct(n / len(risk))}) have a fraud-risk score at or above 0.8 (risk@v1")


@pytest.mark.slow
def test_average_order_value_of_users_likely_to_churn(ask, shop):
    args, r, text = ask("average order value of users likely to churn")
    churners = set(shop.scores["churn"].index[shop.scores["churn"] >= 0.5])
    buys = shop.ev[(shop.ev["event"] == "purchase") & shop.ev["user_id"].isin(churners)]
    revenue = float((buys["price"].fillna(0) * buys["quantity"]).sum())
    orders = buys["order_id"].fillna(buys["session_id"]).nunique()
    assert args["metric"] == "avg_order_value" and args["scores"] == [{"model": "churn", "min": 0.5}]
    assert r["total"]["value"] == pytest.approx(revenue / orders, abs=0.01) and r["total"]["denominator"] == orders
    assert f"The average order value of users likely to churn is {revenue / orders:,.2f} — revenue of {revenue:,.2f} over {orders:,} orders" in text
    assert "Likely to churn means a churn probability at or above 0.5 (churn@v1)" in text


@pytest.mark.slow
def test_retention_of_the_january_cohort(ask, shop):
    args, r, text = ask("retention of the January cohort")
    first = shop.ev.groupby("user_id")["ts"].min()
    cohort = set(first.index[(first >= "2026-01-01") & (first < "2026-02-01")])
    s = shop.sessions
    feb = s.loc[(s["start"] >= "2026-02-01") & (s["start"] < "2026-03-01") & s["user_id"].isin(cohort), "user_id"].nunique()
    assert args["metric"] == "retention" and args["cohort"] == "january"
    row = r["rows"][0]
    month1 = next(c for c in row["periods"] if c["period"] == 1)
    assert (row["group"], row["denominator"], month1["active"]) == ("2026-01", len(cohort), feb)
    assert f"The January 2026 cohort has {len(cohort):,} users" in text and f"{pct(feb / len(cohort))} ({feb:,}) came back in February" in text


# --- what the wording rules decide, without the classifier -----------------------------------
def _slots(question: str, **entities: Any) -> dict[str, Any]:
    from shopsight.tools.metric_slots import metric_args

    return metric_args(Entities(**entities), ConversationState(), question)


@pytest.mark.parametrize("question,entities,expected", [
    ("conversion rate by device since March", {"since": "2026-03-01"},
     {"metric": "session_conversion", "group_by": "device", "since": "2026-03-01"}),
    ("which payment method has the lowest refund rate?", {}, {"metric": "refund_rate", "group_by": "payment", "descending": False}),
    ("how many orders this week vs last week?", {"since": "2026-04-27"}, {"metric": "orders", "since": "2026-04-27", "compare": True}),
    ("revenue by fraud score band", {}, {"metric": "revenue", "group_by": "score_band", "model": "risk"}),
    ("how many users have a churn probability of at least 70%?", {}, {"metric": "score_count_above", "model": "churn", "threshold": 0.7}),
    ("tablet vs desktop sessions", {"device": "tablet"}, {"metric": "sessions", "group_by": "device", "device": ["tablet", "desktop"]}),
    ("weekly cohort retention", {}, {"metric": "retention", "group_by": "cohort_week"}),
    ("cart abandonment in the Gardening category", {}, {"metric": "cart_abandonment", "category": ["Gardening"]}),
    ("top 3 countries by revenue", {"limit": 3}, {"metric": "revenue", "group_by": "country", "limit": 3}),
    ("funnel on mobile", {"device": "mobile"}, {"metric": "funnel", "device": ["mobile"]}),
    ("average churn probability of desktop users", {"device": "desktop"}, {"metric": "score_mean", "model": "churn", "device": ["desktop"]}),
    ("which country spends the most?", {}, {"metric": "revenue", "group_by": "country"}),
    ("what's the refund rate for Electronics?", {}, {"metric": "refund_rate", "category": ["Electronics"]}),
    ("refund rate in April for Mobile", {"device": "mobile", "since": "2026-04-01", "until": "2026-04-30"},
     {"metric": "refund_rate", "device": ["mobile"], "since": "2026-04-01", "until": "2026-04-30"}),
    ("revenue for PayPal in April", {"since": "2026-04-01", "until": "2026-04-30"},
     {"metric": "revenue", "payment": ["paypal"], "since": "2026-04-01", "until": "2026-04-30"}),
    ("how much did u00042 spend in March?", {"user_ids": ["u00042"], "since": "2026-03-01", "until": "2026-03-31"},
     {"metric": "revenue", "user_ids": ["u00042"], "since": "2026-03-01", "until": "2026-03-31"}),
])
def test_slots_are_read_from_the_words(question, entities, expected):
    assert _slots(question, **entities) == expected


# --- bad specs come back as errors the planner can act on ----------------------------------------
def test_bad_specs_return_errors_and_never_raise(ctx):
    unknown_metric = REGISTRY.run(ctx, "query_metric", {"metric": "happiness"})
    assert "metric" in unknown_metric["error"] and "cart_abandonment" in unknown_metric["error"]
    threshold = REGISTRY.run(ctx, "query_metric", {"metric": "score_count_above", "model": "risk", "threshold": 1.5})
    assert "outside [0, 1]" in threshold["error"] and threshold["field"] == "threshold"
    empty = REGISTRY.run(ctx, "query_metric", {"metric": "orders", "since": "2026-02-10", "until": "2026-02-01"})
    assert "the date range is empty" in empty["error"] and empty["field"] == "since"
    category = REGISTRY.run(ctx, "query_metric", {"metric": "revenue", "category": "Gardening"})
    assert category["field"] == "category" and "Laptops" in category["allowed"] and "no such category" in category["error"]
    cohort = REGISTRY.run(ctx, "query_metric", {"metric": "retention", "cohort": "Smarch"})
    assert cohort["field"] == "cohort" and "is not a month" in cohort["error"]
    for r in (threshold, empty, category, cohort):
        assert r["hint"].startswith("Ask again")


def test_a_group_by_on_a_column_the_data_lacks_lists_the_ones_it_has(tmp_path):
    ctx = tiny_context(Workspace(tmp_path / "tiny"))  # the tiny shop has no payment column
    r = REGISTRY.run(ctx, "query_metric", {"metric": "orders", "group_by": "payment"})
    assert r["field"] == "group_by" and "no 'payment' column" in r["error"] and "device" in r["allowed"] and "payment" not in r["allowed"]
    assert REGISTRY.render("query_metric", {}, r).startswith("Cannot group by payment")
    ctx.close()


# --- what the model sees ------------------------------------------------------------------------
def test_the_model_sees_no_sql_and_at_most_the_rows_that_fit(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "funnel", "group_by": "day", "limit": 20})
    text = result_json(r)
    seen = json.loads(text)
    assert len(text) <= MAX_RESULT_CHARS and "sql" not in seen and "SELECT" not in text
    assert r["sql"]["text"].startswith("WITH") and r["sql"]["params"]  # kept for readers of `ask --json`
    assert seen["truncated"] is True and seen["rows_shown"] == len(seen["rows"]) < 20 < r["groups"]
    assert seen["citations"]["sessions"] and seen["citations"]["data_last"]


def test_a_hosted_model_calls_it_through_langchain_with_score_filters(ctx):
    tool = next(t for t in REGISTRY.langchain_tools(ctx) if t.name == "query_metric")
    text = tool.invoke({"metric": "avg_order_value", "group_by": "device", "scores": [{"model": "churn", "min": 0.5}]})
    seen = json.loads(text)
    assert "sql" not in seen and seen["query"]["scores"] == [{"model": "churn", "min": 0.5}] and seen["rows"]
    schema = next(s for s in REGISTRY.schemas() if s["name"] == "query_metric")
    assert "ALWAYS state the numerator and the denominator" in schema["description"]
    assert "cart_abandonment" in schema["parameters"]["properties"]["metric"]["enum"]


def test_examples_go_before_rows_do(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "sessions", "group_by": "day", "examples": 20, "limit": 20})
    seen = json.loads(result_json(r))
    assert len(seen["rows"]) == 20 and "truncated" not in seen and all("examples" not in row for row in seen["rows"])


def test_a_result_that_fits_is_kept_whole(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "cart_to_purchase", "group_by": "device"})
    assert "truncated" not in r and "rows_shown" not in r and len(r["rows"]) == r["groups"]
    assert all(row["examples"] for row in r["rows"])


# --- how the answer reads ---------------------------------------------------------------------
def test_groups_read_in_order_with_denominators_and_no_snake_case(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "orders", "group_by": "payment"})
    text = REGISTRY.render("query_metric", {}, r)
    assert not re.search(r"\b[a-z]+_[a-z]+\b", text)  # "apple pay", never "apple_pay"
    names = [row["group"].replace("_", " ") for row in r["rows"] if row["group"]]
    assert [text.index(f"{n} ") for n in names] == sorted(text.index(f"{n} ") for n in names)
    top = r["rows"][0]
    assert text.startswith(f"{top['group'].replace('_', ' ')} has the most orders: {top['value']:,} ({pct(top['share'])} of the total)")
    assert f"Overall: {r['total']['value']:,}" in text


def test_a_comparison_says_the_change_in_points_from_the_previous_period(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "session_conversion", "since": "2026-02-01", "until": "2026-02-28", "compare": True})
    t, prev = r["total"], r["total"]["previous"]
    way = "up" if t["value"] > prev["value"] else "down"
    text = REGISTRY.render("query_metric", {}, r)
    assert f"{pct(t['value'])} of sessions — {t['numerator']:,} of {t['denominator']:,} — ended in a purchase, in February 2026." in text
    assert f"That is {way} {abs(t['value'] - prev['value']) * 100:.1f} points from {pct(prev['value'])}" in text
    assert f"from {r['citations']['previous_since']} to {r['citations']['previous_until']}" in text


def test_money_has_thousands_separators_and_two_decimals(ctx):
    r = REGISTRY.run(ctx, "query_metric", {"metric": "revenue"})
    text = REGISTRY.render("query_metric", {}, r)
    assert f"Revenue was {r['total']['value']:,.2f} from {r['total']['units']:,} orders" in text and re.search(r"\d{1,3}(,\d{3})+\.\d{2}", text)
    orders = REGISTRY.run(ctx, "query_metric", {"metric": "orders"})
    assert r["total"]["units"] == orders["total"]["value"] > 0  # the orders the revenue is from, not "0 orders"


def test_key_facts_hold_for_the_rendered_answer_and_catch_a_missing_denominator(ctx):
    args = {"metric": "cart_to_purchase"}
    r = REGISTRY.run(ctx, "query_metric", args)
    facts = REGISTRY.key_facts("query_metric", args, r, "cart to purchase rate?")
    assert facts and all(f.holds(REGISTRY.render("query_metric", args, r)) for f in facts)
    only_rate = f"The cart to purchase rate is {pct(r['total']['value'])}."
    assert [f.what for f in facts if not f.holds(only_rate)] == [f"carted sessions {r['total']['denominator']}"]
    grouped = REGISTRY.run(ctx, "query_metric", {"metric": "cart_to_purchase", "group_by": "device"})
    gfacts = REGISTRY.key_facts("query_metric", {}, grouped, "by device")
    top = grouped["rows"][0]
    assert not all(f.holds(f"{pct(top['value'])} overall") for f in gfacts)  # the leading group must be named
    assert all(f.holds(f"{top['group']} leads with {pct(top['value'])}") for f in gfacts)


def test_the_query_engine_is_made_on_first_use_and_closed_with_the_context(ws):
    c = ToolContext(ws)
    assert c._engine is None
    engine = c.query_engine()
    assert c.query_engine() is engine and engine._con is None  # no DuckDB until a query runs
    REGISTRY.run(c, "query_metric", {"metric": "orders"})
    assert engine._con is not None
    with c:
        pass
    assert c._engine is None and engine._con is None


# --- the router: claims bring misfiled analytic questions here, and leave segment questions alone ---
class _OneLabel:
    """A classifier that files every question under one label: the claims alone decide."""

    def __init__(self, label: str) -> None:
        from shopsight.agent.router import labels_of

        self.labels_ = labels_of(REGISTRY)
        self.label = label

    def predict_proba(self, X):
        p = np.zeros((len(X), len(self.labels_)))
        p[:, self.labels_.index(self.label)] = 1.0
        return p


class _NoEmbedder:
    def embed(self, texts):
        return np.zeros((len(texts), 4))


@pytest.mark.parametrize("label,question,tool", [
    ("segment", "cart abandonment by category", "query_metric"),
    ("segment", "What is the overall conversion rate from cart to purchase?", "query_metric"),
    ("segment", "weekly revenue on mobile", "query_metric"),
    ("segment", "What is the conversion rate of mobile sessions?", "segment_summary"),
    ("segment", "What share of tablet sessions add something to the cart?", "segment_summary"),
    ("segment", "How many sessions ended in a purchase between 2026-03-01 and 2026-03-31?", "segment_summary"),
    ("search", "Find users who added items to the cart but never checked out", "query_metric"),
    ("search", "who browsed shoes but did not buy?", "search_histories"),
    ("search", "what share of sessions convert on tablet?", "segment_summary"),
    ("top_risk", "how many users have a fraud score above 0.8?", "query_metric"),
    ("top_risk", "top 10 riskiest users", "top_users"),
    ("top_churn", "average order value of users likely to churn", "query_metric"),
    ("churn", "share of customers with a churn probability above 0.5", "query_metric"),
    ("compare", "desktop versus tablet conversion", "query_metric"),
])
def test_claims_bring_analytic_wording_here_and_leave_the_rest(label, question, tool):
    from shopsight.agent.router import Router

    router = Router(_OneLabel(label), _NoEmbedder(), registry=REGISTRY, categories=["shoes"], countries=["DE"],
                    anchor=pd.Timestamp("2026-04-10", tz="UTC"))
    assert [c["name"] for c in router.plan(question).calls] == [tool]


@pytest.mark.slow
@pytest.mark.parametrize("question,args", [
    ("What is the conversion rate of mobile sessions?", {"device": "mobile"}),
    ("Show the funnel for desktop sessions from DE.", {"device": "desktop", "country": "DE"}),
    ("How many sessions ended in a purchase between 2026-01-10 and 2026-01-31?", {"since": "2026-01-10", "until": "2026-01-31"}),
    ("What is the average order value in Laptops?", {"category": "Laptops"}),
    ("What share of tablet sessions add something to the cart?", {"device": "tablet"}),
    ("How is the shop doing overall: sessions, conversion and revenue?", {}),
])
def test_shipped_segment_questions_still_reach_segment_summary(router, question, args):
    assert router.plan(question).calls == [{"name": "segment_summary", "args": args}]


@pytest.mark.slow
def test_a_follow_up_changes_the_filter_of_the_last_query(router, ctx):
    from shopsight.agent.router import state_from_calls

    state = state_from_calls([{"name": "query_metric", "args": {"metric": "cart_to_purchase", "group_by": "category", "device": ["mobile"]},
                               "result": {"metric": "cart_to_purchase"}}], REGISTRY)
    calls = router.plan("And on desktop?", state).calls
    assert calls == [{"name": "query_metric", "args": {"metric": "cart_to_purchase", "group_by": "category", "device": "desktop"}}]
    assert "error" not in REGISTRY.run(ctx, "query_metric", calls[0]["args"])


# --- the shipped eval cases are satisfiable ---------------------------------------------------------
@pytest.mark.slow
def test_metric_eval_cases_are_met_by_the_oracle(ws):
    from shopsight.evals.oracle import ExpectationOracle
    from shopsight.evals.roles import RoleResolver
    from shopsight.evals.runner import run_eval_set
    from shopsight.evals.schema import load_eval_set

    full = load_eval_set(DEMO_SET)
    cases = [c for c in full.cases if "metric" in c.tags]
    metrics = {e.args.get("metric") for c in cases for t in c.turns for e in t.expect_tools or [] if e.name == "query_metric"}
    groups = {e.args.get("group_by") for c in cases for t in c.turns for e in t.expect_tools or [] if e.name == "query_metric"}
    from shopsight.behavior.query import GROUP_BYS, METRIC_NAMES

    assert metrics >= set(METRIC_NAMES) and groups - {None} >= set(GROUP_BYS)
    subset = full.model_copy(update={"cases": cases})
    resolver = RoleResolver(ws)
    run = run_eval_set(subset, ExpectationOracle(subset, resolver, ToolContext(ws)), resolver=resolver)
    failed = {c.id: c.all_reasons() for c in run.cases if not c.passed}
    assert not failed, failed


# --- charts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,kind,title", [
    ({"metric": "cart_abandonment", "group_by": "category"}, "groups", "Cart abandonment by category"),
    ({"metric": "session_conversion", "group_by": "week"}, "trend", "Weekly session conversion"),
    ({"metric": "funnel"}, "funnel", "View → cart → checkout → purchase funnel"),
    ({"metric": "retention", "group_by": "cohort_week"}, "retention", "Retention by weekly cohort"),
    ({"metric": "orders", "since": "2026-02-15", "compare": True}, "compare", "Orders: this period and the one before"),
])
def test_each_chart_type_renders_a_png_with_its_title(ctx, spec, kind, title):
    from shopsight.integrations.slack_charts import chart_for_tool_call

    r = REGISTRY.run(ctx, "query_metric", spec)
    chart = chart_for_tool_call("query_metric", spec, r)
    assert chart is not None and chart.png.startswith(b"\x89PNG\r\n\x1a\n") and len(chart.png) > 5000
    assert chart.title == title and chart.filename.startswith(kind) and chart.filename.endswith(".png")


def test_a_single_number_or_an_error_gets_no_chart(ctx):
    from shopsight.integrations.slack_charts import chart_for_tool_call

    assert chart_for_tool_call("query_metric", {}, REGISTRY.run(ctx, "query_metric", {"metric": "orders"})) is None
    assert chart_for_tool_call("query_metric", {}, REGISTRY.run(ctx, "query_metric", {"metric": "bogus"})) is None


# --- the CLI: a table under the answer, --chart and /chart ----------------------------------------
class _ScriptedAgent:
    """Stands in for the agent: answers every question with one real query_metric call."""

    backend, model, prompt_version = "scripted", "none", "p0"

    def __init__(self, ctx: ToolContext, spec: dict[str, Any]) -> None:
        from shopsight.agent.types import ToolCall

        self.call = ToolCall("query_metric", spec, REGISTRY.run(ctx, "query_metric", spec))
        self.store = type("Store", (), {"exists": staticmethod(lambda cid: True), "path": "memory"})()

    def ask(self, question: str, conversation_id: str | None = None, on_token=None):
        from shopsight.agent.types import Answer

        return Answer(question=question, answer=REGISTRY.render("query_metric", self.call.args, self.call.result),
                      conversation_id=conversation_id or "c1", tool_calls=(self.call,))


def test_ask_prints_a_table_of_the_groups_and_writes_the_chart(ctx, tmp_path, monkeypatch):
    from shopsight import cli
    from typer.testing import CliRunner

    agent = _ScriptedAgent(ctx, {"metric": "cart_to_purchase", "group_by": "device"})
    monkeypatch.setattr(cli, "_build_agent", lambda *a, **k: agent)
    png = tmp_path / "chart.png"
    out = CliRunner().invoke(cli.app, ["ask", "cart to purchase by device", "--chart", str(png)], terminal_width=200)
    assert out.exit_code == 0, out.output
    for row in agent.call.result["rows"]:
        assert re.search(rf"{row['group']}\s+│\s+{re.escape(pct(row['value']))}\s+│\s+{row['numerator']:,}\s+│\s+{row['denominator']:,}", out.output)
    assert png.read_bytes().startswith(b"\x89PNG") and f"Chart written to {png}" in out.output.replace("\n", "")


def test_chat_writes_the_last_answers_chart_on_request(ctx, tmp_path, monkeypatch):
    from shopsight import cli
    from typer.testing import CliRunner

    agent = _ScriptedAgent(ctx, {"metric": "retention", "group_by": "cohort_month"})
    monkeypatch.setattr(cli, "_build_agent", lambda *a, **k: agent)
    monkeypatch.setattr(cli, "_streamed_answer", lambda ag, q, cid: ag.ask(q, cid))
    png = tmp_path / "retention.png"
    out = CliRunner().invoke(cli.app, ["chat"], input=f"/chart {png}\nretention by cohort\n/chart {png}\n/quit\n", terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "No chart yet" in out.output and png.read_bytes().startswith(b"\x89PNG")


def test_slack_uploads_the_query_chart_in_the_thread(ctx):
    from fake_slack import BOT_USER_ID, FakeSlack, message_event, post_event
    from shopsight.integrations.slack import EventsServer, SlackSettings, create_app

    class Agent:
        def ask(self, question: str, *, conversation_id: str):
            return _ScriptedAgent(ctx, {"metric": "cart_abandonment", "group_by": "category"}).ask(question, conversation_id)

    fake = FakeSlack().start()
    settings = SlackSettings(bot_token="xoxb-test-token", app_token=None, signing_secret="s3cret", allowed_channels=[],
                             allowed_users=[], workers=1, max_charts=2, api_url=fake.api_url)
    server = EventsServer(create_app(settings, Agent(), mode="http"), host="127.0.0.1", port=0).start()
    ts = f"{time.time():.6f}"  # a message of now: taken once, as Slack sends it
    try:
        status, _ = post_event(server.url, "s3cret", message_event(f"<@{BOT_USER_ID}> abandonment by category?", ts=ts))
        assert status == 200
        fake.wait_for(lambda f: f.calls_to("files.completeUploadExternal"))
        (upload,) = fake.calls_to("files.completeUploadExternal")
        assert upload["thread_ts"] == ts and json.loads(upload["files"])[0]["title"] == "Cart abandonment by category"
        (png,) = fake.uploads.values()
        assert png.startswith(b"\x89PNG")
    finally:
        server.shutdown()
        fake.stop()



class _Unsure(_OneLabel):
    """A classifier torn between two labels: the first wins narrowly."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(first)
        self.second = second

    def predict_proba(self, X):
        p = np.full((len(X), len(self.labels_)), 0.01)
        p[:, self.labels_.index(self.label)] = 0.40
        p[:, self.labels_.index(self.second)] = 0.35
        return p


def _router(classifier):
    from shopsight.agent.router import Router

    return Router(classifier, _NoEmbedder(), registry=REGISTRY, categories=["Laptops"], countries=["DE"],
                  anchor=pd.Timestamp("2026-04-10", tz="UTC"))


@pytest.mark.parametrize("label,question,call", [
    ("metric", "What is the average order value of u00218?", {"name": "get_user_profile", "args": {"user_id": "u00218"}}),
    ("segment", "How much revenue did u00042 bring?", {"name": "get_user_profile", "args": {"user_id": "u00042"}}),
    ("metric", "What's the churn rate for u00042?", {"name": "predict_churn", "args": {"user_id": "u00042"}}),
])
def test_a_shop_measure_asked_of_one_user_is_about_that_user(label, question, call):
    assert _router(_OneLabel(label)).plan(question).calls == [call]


def test_a_shop_measure_without_a_user_stays_a_shop_measure():
    plan = _router(_OneLabel("metric")).plan("average order value by country")
    assert [c["name"] for c in plan.calls] == ["query_metric"]


def test_an_unsure_label_with_nothing_to_call_gives_way_to_the_next_callable_one():
    # "order" needs an order id the question does not have; the runner-up can answer
    plan = _router(_Unsure("order", "segment")).plan("What is the average order value in Laptops?")
    assert plan.label == "segment" and plan.calls == [{"name": "segment_summary", "args": {"category": "Laptops"}}]
    sure = _router(_OneLabel("order")).plan("What is the average order value in Laptops?")
    assert sure.calls == []  # a confident label is not second-guessed


def test_a_question_asking_who_needs_some_of_them_named():
    result = {"metric": "users", "label": "users", "total": {"value": 35, "denominator": 300, "examples": ["u00003", "u00017"]}}
    facts = REGISTRY.key_facts("query_metric", {"metric": "users"}, result, "Find users who carted but never checked out")
    draft = "35 of the 300 users with a session added to the cart but never checked out."
    assert [f.what for f in facts if not f.holds(draft)] == ["an example user u00003"]
    assert all(f.holds(draft + " For example: u00003, u00017.") for f in facts)
    how_many = REGISTRY.key_facts("query_metric", {"metric": "users"}, result, "How many users carted but never checked out?")
    assert all(f.holds(draft) for f in how_many)


def test_one_users_measure_names_the_user_and_no_orders_is_no_revenue(ctx, ws):
    ev = ws.load_events()
    buyer = ev.loc[ev["event"] == "purchase", "user_id"].value_counts().index[0]
    never = sorted(set(ev["user_id"]) - set(ev.loc[ev["event"] == "purchase", "user_id"]))[0]
    orders = REGISTRY.run(ctx, "query_metric", {"metric": "orders", "user_ids": [buyer]})
    n = ev.loc[(ev["event"] == "purchase") & (ev["user_id"] == buyer), "order_id"].nunique()
    text = REGISTRY.render("query_metric", {}, orders)
    assert orders["total"]["value"] == n and text.startswith(f"{n:,} orders by {buyer} over all the data")
    nothing = REGISTRY.run(ctx, "query_metric", {"metric": "revenue", "user_ids": [never]})
    assert REGISTRY.render("query_metric", {}, nothing).startswith(f"No orders by {never} over all the data")
    assert "so no revenue" in REGISTRY.render("query_metric", {}, nothing)
    # an answer about one user's orders must name the user ("5 orders in April" alone is about whom?)
    facts = REGISTRY.key_facts("query_metric", {}, orders, "how many orders did they place?")
    assert all(f.holds(text) for f in facts)
    assert not all(f.holds(f"{n:,} orders over all the data.") for f in facts)


def test_a_count_of_chosen_users_says_of_them(ctx, ws):
    """Users counted among chosen ones (a ranking's): "k of the n chosen users (…) bought something", not "by n users"."""
    ev = ws.load_events()
    buyers = set(ev.loc[ev["event"] == "purchase", "user_id"])
    ids = sorted(set(ev["user_id"]))[:8]
    r = REGISTRY.run(ctx, "query_metric", {"metric": "users", "user_ids": ids, "did": ["purchase"]})
    k = len(buyers & set(ids))
    text = REGISTRY.render("query_metric", {}, r)
    assert r["total"]["value"] == k
    assert text.startswith(f"{k} of the 8 chosen users ({', '.join(ids[:3])}, …) (") and "bought something" in text
    two = REGISTRY.render("query_metric", {}, REGISTRY.run(ctx, "query_metric", {"metric": "users", "user_ids": ids[:2]}))
    assert two.startswith(f"2 of {ids[0]} and {ids[1]} had a session over all the data")


def test_a_ranking_of_tied_users_says_they_tie_and_a_count_of_many_chosen_names_how_many():
    tied = {"metric": "churn", "n_scored": 5000, "users": [{"rank": i + 1, "user_id": f"u0000{i}", "probability": 0.9861 - i * 1e-5}
                                                          for i in range(4)]}
    text = REGISTRY.render("top_users", {"metric": "churn"}, tied)
    assert text.startswith("All of the top 4 users most likely to churn are tied at 98.6%, of 5,000 scored users: 1. u00000 (98.6%)")
    apart = {**tied, "users": [{"rank": 1, "user_id": "u00001", "probability": 0.9}, {"rank": 2, "user_id": "u00002", "probability": 0.8}]}
    assert REGISTRY.render("top_users", {"metric": "churn"}, apart).startswith("u00001 is the user most likely to churn (90.0%)")
    # a count among 10 chosen users must say "of the 10": "5 users had a session on mobile" reads as the whole shop
    ids = [f"u000{i:02d}" for i in range(10)]
    result = {"metric": "users", "label": "users", "unit": "users", "query": {"metric": "users", "user_ids": ids, "device": ["mobile"]},
              "total": {"value": 5}}
    facts = REGISTRY.key_facts("query_metric", {}, result, "how many of those are on mobile?")
    assert not all(f.holds("The 5 users who had a session on mobile were 5.") for f in facts)
    assert all(f.holds("5 of the 10 chosen users had a session on mobile.") for f in facts)
    assert not all(f.holds("5 of the 10 chosen users had a session.") for f in facts)  # the filter is part of the answer
