"""The recommender (behavior/models/recommend.py) and the recommend_items tool: training, reasons, routing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shopsight.agent.guard import check_grounding
from shopsight.agent.types import ToolCall
from shopsight.behavior.models.common import TrainSettings
from shopsight.behavior.workspace import Workspace
from shopsight.tools import default_registry
from shopsight.tools.context import ToolContext

REGISTRY = default_registry()
TINY = TrainSettings(epochs=2, max_len=20, emb_dim=8, hidden=12, max_seconds=20.0)


@pytest.fixture(scope="module")
def shop_ws(tmp_path_factory) -> tuple[Workspace, dict]:
    """A 300-user demo shop with a trained recommender (trained once for the module)."""
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model

    ws = Workspace(Path(tmp_path_factory.mktemp("rec")) / "ws")
    build_demo_workspace(ws, users=300, days=60, seed=7, progress=False)
    return ws, train_model(ws, "recommend", settings=TINY)


@pytest.fixture
def ctx(shop_ws) -> ToolContext:
    return ToolContext(shop_ws[0])


def _bought(events: pd.DataFrame, user: str) -> set[str]:
    mine = events[(events["user_id"] == user) & (events["event"] == "purchase")]
    return set(mine["item_id"].dropna().astype(str))


def test_training_saves_a_version_with_the_model_and_three_baselines_measured(shop_ws):
    from shopsight.behavior.models import ranking_rows
    from shopsight.behavior.models.registry import load

    ws, trained = shop_ws
    card = load(ws, "recommend", trained["version"]).card
    assert trained["version"] == "v1" and card["version"] == "v1"
    assert set(card["baselines"]) == {"popularity", "category_popularity", "cooccurrence"}
    for report in [card["metrics"], *card["baselines"].values()]:
        assert 0 <= report["hr_at_10"] <= 1 and 0 <= report["ndcg_at_10"] <= report["hr_at_10"]
        assert 0 < report["coverage"] <= 1 and report["n"] == card["split"]["n_test_users"] > 0
    rows = ranking_rows(card)
    assert rows[0]["who"] == "recommend@v1" and {r["who"] for r in rows[1:]} == {"popularity", "category_popularity", "cooccurrence"}
    assert card["data_window"]["test_cutoff"] < card["data_window"]["last_event"]


def test_a_saved_model_loads_and_ranks_as_it_did(shop_ws):
    from shopsight.behavior.models import load_model

    ws, _ = shop_ws
    events = ws.load_events()
    model = load_model(ws, "recommend")
    mine = events[events["user_id"] == "u00001"]
    assert model.recommend(mine, 5) == load_model(ws, "recommend").recommend(mine, 5) and len(model.recommend(mine, 5)) == 5


def test_the_tool_returns_items_with_reasons_sessions_and_the_model_version(ctx):
    r = REGISTRY.run(ctx, "recommend_items", {"user_id": "u00001", "limit": 3})
    assert r["user_id"] == "u00001" and r["basis"] == "their history" and len(r["items"]) == 3
    for item in r["items"]:
        assert item["item_id"].startswith("i") and item["category"] and item["reason"]
    assert r["citations"]["model"] == r["model"] == "recommend@v1" and r["citations"]["sessions"]
    assert all(s.startswith("u00001-") for s in r["citations"]["sessions"])


def test_the_rendered_recommendation_leads_with_the_items_and_is_grounded(ctx):
    call = ToolCall("recommend_items", {"user_id": "u00001"}, REGISTRY.run(ctx, "recommend_items", {"user_id": "u00001"}))
    text = REGISTRY.render(call.name, call.args, call.result)
    assert text.startswith("For user u00001 I would recommend ") and call.result["items"][0]["item_id"] in text
    assert check_grounding(text, [call], "what should we recommend to u00001?", vocabulary=ctx.vocabulary()).ok


def test_an_invented_item_id_is_flagged_by_the_guard(ctx):
    call = ToolCall("recommend_items", {"user_id": "u00001"}, REGISTRY.run(ctx, "recommend_items", {"user_id": "u00001"}))
    first = call.result["items"][0]["item_id"]
    text = REGISTRY.render(call.name, call.args, call.result).replace(first, "i09999")
    verdict = check_grounding(text, [call], "what should we recommend to u00001?")
    assert "i09999" in verdict.unsupported and not verdict.ok


def test_a_user_without_history_gets_the_shops_popular_items_said_as_such(shop_ws):
    ws, _ = shop_ws
    events = ws.load_events()
    login = events.iloc[:1].copy()
    login[["user_id", "session_id", "event"]] = ["u09999", "u09999-s0001", "login"]
    login[["item_id", "category"]] = pd.NA
    ctx = ToolContext(ws, events=pd.concat([events, login], ignore_index=True))
    call = ToolCall("recommend_items", {"user_id": "u09999"}, REGISTRY.run(ctx, "recommend_items", {"user_id": "u09999"}))
    r = call.result
    assert r["basis"].startswith("the shop's popular items") and r["citations"]["sessions"] == []
    counts = [i["popular_users"] for i in r["items"]]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    text = REGISTRY.render(call.name, call.args, r)
    assert "has no history yet, so I would show the shop's popular items" in text
    assert check_grounding(text, [call], "what should we recommend to u09999?", vocabulary=ctx.vocabulary()).ok
    assert check_grounding(text.replace("popular", "best"), [call], "q").missing  # the answer must say so


def test_items_the_user_already_bought_are_left_out_unless_the_category_is_repeat_purchase(shop_ws, ctx):
    from shopsight.behavior.models import load_model

    model = load_model(shop_ws[0], "recommend")
    events = ctx.get_events()
    buyers = events.loc[events["event"] == "purchase", "user_id"].value_counts().index[:20]
    checked = 0
    for user in buyers:
        bought = _bought(events, user)
        r = REGISTRY.run(ctx, "recommend_items", {"user_id": user, "limit": 10})
        for item in r["items"]:
            if item["item_id"] in bought:
                assert item["category"] in model.repeat_categories_ and item["bought_before"]
            checked += 1
    assert checked == 200


def test_repeat_purchase_categories_are_those_rebought_far_more_than_the_shop(shop_ws):
    from shopsight.behavior.models.recommend import repeat_categories

    rows = []
    for u in range(30):  # milk is bought again by every buyer; books never
        rows += [(f"u{u}", f"s{u}a", "purchase", "milk1", "Dairy"), (f"u{u}", f"s{u}b", "purchase", "milk1", "Dairy"),
                 (f"u{u}", f"s{u}a", "purchase", f"book{u}", "Books")]
    events = pd.DataFrame(rows, columns=["user_id", "session_id", "event", "item_id", "category"])
    assert repeat_categories(events) == {"Dairy": 1.0}


def test_an_unknown_user_gets_the_standard_no_such_user_error(ctx):
    r = REGISTRY.run(ctx, "recommend_items", {"user_id": "u99999"})
    assert r["error"] == "no such user" and r["user_id"] == "u99999"
    assert REGISTRY.render("recommend_items", {"user_id": "u99999"}, r).startswith("There is no such user: u99999.")


def test_without_a_trained_recommender_the_tool_says_what_to_run(workspace):
    from test_agent_support import tiny_context

    r = REGISTRY.run(tiny_context(workspace), "recommend_items", {"user_id": "u00001"})
    assert r["error"] == "recommendations unavailable" and "shopsight train recommend" in r["hint"]


@pytest.mark.slow
@pytest.mark.parametrize("question", [
    "What should we recommend to u00042?",
    "What to put in u00042's next email?",
    "Which products should we show u00042?",
])
def test_the_router_sends_recommendation_questions_to_recommend_items(workspace, question):
    from shopsight.agent.router import Router, default_embedder, load_router
    from test_agent_support import trained_router_into

    trained_router_into(workspace)
    clf, version = load_router(workspace)
    router = Router(clf, default_embedder(), version=version, anchor=pd.Timestamp("2026-04-10", tz="UTC"))
    assert [(c["name"], c["args"]) for c in router.plan(question).calls] == [("recommend_items", {"user_id": "u00042"})]


@pytest.mark.parametrize("question,label", [
    ("What to put in u00042's next email?", None),
    ("Which products go in u00042's marketing e-mails?", None),
    ("What is u00042's email?", "privacy"),
    ("Put u00042's email address in the next email", "privacy"),
])
def test_an_email_to_send_is_not_a_request_for_an_email_address(question, label):
    from shopsight.agent.router import policy_label
    from shopsight.tools.registry import Entities

    assert policy_label(question, Entities(user_ids=["u00042"])) == label


def test_train_all_and_the_demo_include_the_recommender():
    from shopsight.cli import train_targets

    assert train_targets("all")[-1] == "recommend" and train_targets("recommend") == ["recommend"]
