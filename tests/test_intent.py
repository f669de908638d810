"""Purchase intent: leak-free session prefixes, the time split, and the model contract on a small shop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shopsight.behavior.events import to_canonical
from shopsight.behavior.models.common import NotFittedError, TrainSettings
from shopsight.behavior.models.evaluation import evaluate, score_users
from shopsight.behavior.models.intent import (
    OUTCOME_EVENTS,
    IntentModel,
    category_affinity,
    next_categories,
    session_examples,
    session_prefix,
    user_intent_features,
)
from shopsight.behavior.synthetic import generate_shop

T0 = pd.Timestamp("2026-03-02 10:00", tz="UTC")
TINY = TrainSettings(epochs=3, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=60.0)


def ev(user, minutes, event, session, *, category="Books", price=20.0):
    return {"user_id": user, "ts": T0 + pd.Timedelta(minutes=minutes), "event": event, "item_id": "i1",
            "category": category, "price": price, "quantity": 1, "session_id": session}


@pytest.fixture(scope="module")
def shop():
    return generate_shop(users=400, days=70, seed=3)


@pytest.fixture(scope="module")
def fitted(shop):
    return IntentModel(n_snapshots=3, max_train_sessions=4000, settings=TINY, session_max_len=12).fit(shop.events)


def test_session_prefix_stops_before_the_first_checkout_or_purchase():
    events = to_canonical(pd.DataFrame([
        ev("a", 0, "view", "a1"), ev("a", 1, "add_to_cart", "a1"), ev("a", 2, "checkout", "a1"),
        ev("a", 3, "view", "a1"), ev("a", 4, "purchase", "a1"),
        ev("a", 100, "view", "a2"), ev("a", 101, "view", "a2"),  # no purchase: kept whole
        ev("b", 0, "purchase", "b1"), ev("b", 1, "view", "b1"),  # opens with a purchase: empty prefix
    ]))
    prefix = session_prefix(events)
    assert not prefix["event"].isin(OUTCOME_EVENTS).any()
    assert prefix.groupby("session_id").size().to_dict() == {"a1": 2, "a2": 2}


def test_session_examples_label_whole_sessions_but_count_only_the_prefix():
    events = to_canonical(pd.DataFrame([
        ev("a", 0, "view", "a1"), ev("a", 1, "add_to_cart", "a1"), ev("a", 2, "checkout", "a1"), ev("a", 4, "purchase", "a1"),
        ev("a", 100, "view", "a2"), ev("a", 101, "view", "a2"), ev("a", 102, "add_to_cart", "a2"),
    ]))
    ex = session_examples(events)
    assert ex.loc["a1", "purchased"] and not ex.loc["a2", "purchased"]
    assert ex.loc["a1", "n_events"] == 2 and ex.loc["a1", "n_add_to_cart"] == 1
    # the history of session a2 includes a1's purchase, which happened before a2 started
    assert ex.loc["a2", "prior_purchases"] == 1 and ex.loc["a1", "prior_purchases"] == 0


def test_session_features_are_hand_computable_and_ignore_row_order():
    rows = [
        ev("a", 0, "view", "a1", price=10.0), ev("a", 1, "add_to_cart", "a1", price=30.0),
        {**ev("a", 2, "add_to_cart", "a1", price=5.0), "quantity": 2}, ev("a", 3, "checkout", "a1"),
        ev("a", 2 * 1440, "search", "a2", category=None, price=None), ev("a", 2 * 1440 + 4, "view", "a2", price=7.0),
    ]
    events = to_canonical(pd.DataFrame(rows)).assign(device=["mobile", "mobile", "mobile", "mobile", None, "tablet"])
    shuffled = events.sample(frac=1.0, random_state=0)

    ex = session_examples(events, ["mobile", "tablet"])
    pd.testing.assert_frame_equal(session_prefix(shuffled), session_prefix(events))
    pd.testing.assert_frame_equal(session_examples(shuffled, ["mobile", "tablet"]), ex)

    a1, a2 = ex.loc["a1"], ex.loc["a2"]
    assert (a1["n_events"], a1["n_add_to_cart"], a1["n_view"]) == (3, 2, 1)  # the checkout is not in the prefix
    assert a1["mean_price"] == pytest.approx(15.0) and a1["max_price"] == 30.0
    assert a1["cart_value"] == pytest.approx(30.0 + 2 * 5.0) and a1["minutes"] == pytest.approx(2.0)
    assert a1["events_per_minute"] == pytest.approx(1.5) and (a1["hour"], a1["weekend"]) == (10, 0.0)  # a Monday
    assert (a1["device_mobile"], a1["device_tablet"]) == (1.0, 0.0)
    assert (a2["device_mobile"], a2["device_tablet"]) == (0.0, 1.0)  # the first known device
    assert a2["mean_price"] == 7.0 and a2["n_categories"] == 1 and a2["prior_sessions"] == 1
    assert a2["days_since_prev_session"] == pytest.approx(2.0)


def test_a_session_without_a_known_device_counts_as_no_device():
    events = to_canonical(pd.DataFrame([ev("a", 0, "view", "a1"), ev("a", 1, "view", "a1")])).assign(device=None)
    ex = session_examples(events, ["mobile"])
    assert ex.loc["a1", "device_mobile"] == 0.0


def test_shop_prefixes_never_contain_outcome_events(shop):
    prefix = session_prefix(shop.events)
    assert len(prefix) > 0
    assert not prefix["event"].isin(OUTCOME_EVENTS).any()
    ex = session_examples(shop.events)
    assert ex["purchased"].any() and not ex["purchased"].all()


def test_user_features_ignore_events_at_or_after_asof(shop):
    events = shop.events
    asof = events["ts"].min() + pd.Timedelta(days=30)
    later = events[events["ts"] >= asof].assign(price=9999.0)
    changed = pd.concat([events[events["ts"] < asof], later])
    a = user_intent_features(events, asof)
    b = user_intent_features(changed, asof)
    pd.testing.assert_frame_equal(a, b)


def test_next_categories_weight_recent_carts_over_old_views():
    events = to_canonical(pd.DataFrame(
        [ev("u", m, "view", "s1", category="Books") for m in range(5)]
        + [ev("u", 30 * 1440, "add_to_cart", "s2", category="Audio"), ev("u", 30 * 1440 + 1, "view", "s2", category="Toys")]
    ))
    top = next_categories(events, "u", k=3)
    assert [c["category"] for c in top] == ["Audio", "Toys", "Books"]
    assert sum(c["share"] for c in top) == pytest.approx(1.0, abs=1e-3)
    mix = category_affinity(events)
    assert mix.groupby("user_id")["share"].sum().to_numpy() == pytest.approx([1.0])


def test_predict_proba_gives_probabilities_for_every_user(fitted, shop):
    p = fitted.predict_proba(shop.events)
    assert set(p.index) == set(shop.events["user_id"].unique())
    assert p.between(0, 1).all() and p.std() > 0
    with pytest.raises(KeyError, match="nobody"):
        fitted.predict_proba(shop.events, ["nobody"])


def test_card_reports_model_beside_baselines_on_a_time_split(fitted, shop):
    card = evaluate(fitted, shop.events).card
    C = pd.Timestamp(card["data_window"]["test_cutoff"])
    assert C < shop.events["ts"].max()
    # every training snapshot's label window ends by the cutoff
    for a in card["split"]["user_train_snapshots"] + [card["split"]["user_validation_snapshot"]]:
        assert pd.Timestamp(a) + pd.Timedelta(days=fitted.horizon_days) <= C
    for key in ("metrics", "session_metrics"):
        assert 0 <= card[key]["roc_auc"] <= 1 and card[key]["threshold_source"] == "given"
    assert {"logistic", "lightgbm", "days_since_last_purchase"} <= set(card["baselines"])
    assert {"logistic", "lightgbm"} <= set(card["session_baselines"])


def test_training_ignores_events_after_the_cutoff(shop):
    events = shop.events
    C = events["ts"].max().floor("D") - pd.Timedelta(days=7)
    a = IntentModel(n_snapshots=2, max_train_sessions=1500, settings=TINY, session_max_len=8).fit(events, cutoff=C)
    future = events["ts"] >= C
    scrambled = pd.concat([events[~future], events[future].assign(price=1.0, event="view")])
    b = IntentModel(n_snapshots=2, max_train_sessions=1500, settings=TINY, session_max_len=8).fit(scrambled, cutoff=C)
    for net in ("net_", "session_net_"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_one_user_scores_equal_the_whole_table_scores(fitted, shop):
    events = shop.events
    batch = fitted.predict_proba(events)
    sessions = fitted.predict_sessions(events)
    for user in sorted(events["user_id"].unique())[::40]:
        explained = fitted.explain(events, user)
        assert fitted.predict_proba(events, [user]).iloc[0] == pytest.approx(batch[user], abs=1e-6)
        assert explained["probability"] == pytest.approx(round(float(batch[user]), 4), abs=1e-6)
        for s in explained["sessions"]:
            assert s["p_purchase"] == pytest.approx(round(float(sessions[s["session_id"]]), 4), abs=1e-6)


def test_one_users_session_examples_equal_their_whole_table_rows(shop):
    events = shop.events
    whole = session_examples(events, ["desktop", "mobile"])
    for user in sorted(events["user_id"].unique())[::50]:
        mine = session_examples(events[events["user_id"] == user], ["desktop", "mobile"])
        pd.testing.assert_frame_equal(mine, whole[whole["user_id"] == user], check_exact=True)


def test_session_probability_does_not_see_the_checkout(fitted, shop):
    events = shop.events
    sid = session_examples(events).query("purchased").index[0]
    p = fitted.predict_sessions(events, [sid])
    # Remove everything from the checkout on: the session looks the same to the model.
    rows = events[events["session_id"] == sid]
    cut = rows.index[rows["event"].isin(OUTCOME_EVENTS)][0]
    truncated = events.drop(rows.index[rows.index >= cut])
    q = fitted.predict_sessions(truncated, [sid])
    assert 0 <= p.iloc[0] <= 1
    assert p.iloc[0] == pytest.approx(q.iloc[0], abs=1e-6)


def test_explain_cites_the_users_own_sessions_with_directed_factors(fitted, shop):
    events = shop.events
    user = events.loc[events["event"] == "purchase", "user_id"].iloc[0]
    out = fitted.explain(events, user)
    own = set(events.loc[events["user_id"] == user, "session_id"])
    assert out["user_id"] == user and 0 <= out["probability"] <= 1
    assert out["evidence"] and {e["session_id"] for e in out["evidence"]} <= own
    assert {s["session_id"] for s in out["sessions"]} <= own
    assert out["factors"] and all(f["direction"] in ("raises", "lowers") for f in out["factors"])
    assert any(f["name"] == "recent_event_sequence" for f in out["factors"]) or len(out["factors"]) == 6
    assert 1 <= len(out["next_categories"]) <= 3
    assert out["probability"] == pytest.approx(float(fitted.predict_proba(events, [user]).iloc[0]), abs=1e-4)


def test_explain_session_factors_and_unknown_ids(fitted, shop):
    sid = session_examples(shop.events).index[-1]
    out = fitted.explain_session(shop.events, sid)
    assert out["session_id"] == sid and 0 <= out["probability"] <= 1
    assert all(f["direction"] in ("raises", "lowers") for f in out["factors"])
    with pytest.raises(KeyError):
        fitted.explain(shop.events, "nobody")
    with pytest.raises(KeyError):
        fitted.predict_sessions(shop.events, ["no-such-session"])


def test_save_load_round_trip_gives_identical_predictions(fitted, shop, workspace):
    version = fitted.save(workspace, scores=score_users(fitted, shop.events))
    loaded = IntentModel.load(workspace)
    assert loaded.version_ == version and loaded.label == f"intent@{version}"
    users = list(shop.events["user_id"].unique()[:50])
    np.testing.assert_allclose(loaded.predict_proba(shop.events, users), fitted.predict_proba(shop.events, users), rtol=0, atol=1e-9)
    sids = list(session_examples(shop.events).index[-40:])
    np.testing.assert_allclose(loaded.predict_sessions(shop.events, sids), fitted.predict_sessions(shop.events, sids), rtol=0, atol=1e-9)
    scores = pd.read_parquet(workspace.models_dir / "intent" / version / "scores.parquet")
    assert {"user_id", "probability", "next_category"} <= set(scores.columns)
    assert scores["probability"].between(0, 1).all()


def test_unfitted_model_says_how_to_fix_it(shop):
    with pytest.raises(NotFittedError, match="shopsight train intent"):
        IntentModel().predict_proba(shop.events)
