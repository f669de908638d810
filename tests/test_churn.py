"""The churn model: time split without leakage, predictions, explanations, persistence, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from shopsight.behavior.models import load_model, metric_rows
from shopsight.behavior.models.churn import ChurnModel, churn_labels
from shopsight.behavior.models.common import NotFittedError, TrainSettings
from shopsight.behavior.models.evaluation import evaluate, score_users
from shopsight.behavior.synthetic import generate_shop, write_shop

SMALL = TrainSettings(epochs=4, hidden=16, emb_dim=8, max_len=32, patience=2, seed=0)


@pytest.fixture(scope="module")
def shop():
    return generate_shop(users=300, days=75, seed=11)


@pytest.fixture(scope="module")
def fitted(shop):
    return ChurnModel(horizon_days=14, n_snapshots=3, settings=SMALL).fit(shop.events, labels=shop.labels["users"])


@pytest.fixture(scope="module")
def card(shop, fitted):
    return evaluate(fitted, shop.events, labels=shop.labels["users"]).card


def test_training_label_windows_end_at_or_before_the_test_cutoff(fitted, card):
    split = card["split"]
    cutoff = pd.Timestamp(split["test_snapshot"])
    snaps = [pd.Timestamp(s) for s in split["train_snapshots"] + [split["validation_snapshot"]]]

    assert pd.Timestamp(split["last_train_label_end"]) <= cutoff
    assert all(s + pd.Timedelta(days=14) <= cutoff for s in snaps)
    assert fitted.training_cutoffs(cutoff)[0] + pd.Timedelta(days=14) == cutoff


def test_events_after_the_cutoff_do_not_change_the_trained_net(shop, fitted, card):
    cutoff = pd.Timestamp(card["split"]["test_snapshot"])
    # Keep what the test labels need, but scramble every event after the cutoff: training must not see it.
    after = shop.events["ts"] >= cutoff
    scrambled = shop.events.copy()
    scrambled.loc[after, "event"] = "view"
    again = ChurnModel(horizon_days=14, n_snapshots=3, settings=SMALL).fit(scrambled, cutoff=cutoff)

    for k, v in fitted.net_.state_dict().items():
        assert torch.equal(v, again.net_.state_dict()[k]), k
    assert evaluate(again, scrambled).card["metrics"]["base_rate"] == 1.0  # no purchases after the cutoff: everyone churns


def test_churn_labels_look_only_at_the_horizon():
    t = pd.Timestamp("2024-01-10", tz="UTC")
    ev = pd.DataFrame({
        "user_id": ["a", "b", "c", "c"],
        "ts": [t + pd.Timedelta(days=2), t + pd.Timedelta(days=20), t - pd.Timedelta(days=1), t + pd.Timedelta(days=5)],
        "event": ["purchase", "purchase", "purchase", "view"],
    })
    assert churn_labels(ev, t, 14, pd.Index(["a", "b", "c"])).tolist() == [0, 1, 1]


def test_card_compares_the_model_with_every_baseline_and_ground_truth(card):
    assert set(card["baselines"]) == {"days_since_last_purchase", "logistic", "lightgbm", "bgnbd"}
    for report in [card["metrics"], *card["baselines"].values()]:
        assert 0.0 <= report["roc_auc"] <= 1.0 and report["n"] == card["split"]["n_test"]
    assert card["metrics"]["roc_auc"] > 0.6  # a real signal, even from 300 users and 4 epochs
    assert 0.0 <= card["ground_truth"]["model"]["roc_auc"] <= 1.0
    assert card["train_seconds"] > 0 and card["calibration"]["scale"] > 0
    who = {r["who"] for r in metric_rows({**card, "name": "churn", "version": "v0"})}
    assert {"churn@v0", "lightgbm", "bgnbd"} <= who


def test_predict_proba_gives_probabilities_for_every_user_as_of_the_end(shop, fitted):
    p = fitted.predict_proba(shop.events)
    users = sorted(shop.events["user_id"].unique())

    assert list(p.index) == users
    assert ((p >= 0) & (p <= 1)).all()
    one = fitted.predict_proba(shop.events, [users[5]])
    assert one.iloc[0] == pytest.approx(p.loc[users[5]], abs=1e-6)  # the same with one user as with all
    # users who bought in the last week are less likely to churn than users silent for a month
    f = score_users(fitted, shop.events).set_index("user_id")
    assert p[f["recency_days"] < 7].mean() < p[f["recency_days"] > 30].mean()


def test_unknown_user_is_a_key_error(shop, fitted):
    with pytest.raises(KeyError, match="nobody"):
        fitted.predict_proba(shop.events, ["nobody"])
    with pytest.raises(KeyError, match="nobody"):
        fitted.explain(shop.events, "nobody")


def test_explain_cites_the_users_own_sessions_and_named_signals(shop, fitted):
    uid = shop.events["user_id"].iloc[0]
    e = fitted.explain(shop.events, uid)

    assert e["user_id"] == uid and e["model"] == "churn@unsaved"
    assert e["probability"] == pytest.approx(float(fitted.predict_proba(shop.events, [uid]).iloc[0]), abs=1e-3)
    own = set(shop.events.loc[shop.events["user_id"] == uid, "session_id"])
    assert e["evidence"] and all(ev["session_id"] in own for ev in e["evidence"])
    assert {f["direction"] for f in e["factors"]} <= {"raises", "lowers"}
    assert all(set(f) == {"name", "value", "direction", "contribution"} for f in e["factors"])
    names = {r["name"] for r in e["rules"]}
    assert {"never_purchased", "no_purchase_within_horizon", "overdue_vs_usual_gap", "activity_dropping"} == names
    json.dumps(e)  # data for the agent: JSON-able


def test_save_and_load_give_the_same_predictions(shop, fitted, workspace):
    version = fitted.save(workspace)
    loaded = load_model(workspace, "churn")

    assert version == "v1" and loaded.version_ == "v1"
    users = list(shop.events["user_id"].unique()[:20])
    np.testing.assert_allclose(loaded.predict_proba(shop.events, users), fitted.predict_proba(shop.events, users), atol=1e-6)
    assert loaded.explain(shop.events, users[0])["model"] == "churn@v1"


def test_unfitted_model_says_how_to_fit_it(shop):
    with pytest.raises(NotFittedError, match="shopsight train churn"):
        ChurnModel().predict_proba(shop.events)


def test_cli_train_models_and_predict(workspace):
    from shopsight.cli import app

    write_shop(workspace.root, users=250, days=75, seed=5)
    runner = CliRunner()

    res = runner.invoke(app, ["train", "churn", "--horizon", "14", "--epochs", "3", "-w", str(workspace.root), "--json"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout)
    assert trained[0]["name"] == "churn" and trained[0]["version"] == "v1"

    res = runner.invoke(app, ["models", "-w", str(workspace.root), "--json"])
    assert res.exit_code == 0, res.output
    assert [(m["name"], m["version"]) for m in json.loads(res.stdout)] == [("churn", "v1")]

    uid = workspace.load_events()["user_id"].iloc[0]
    res = runner.invoke(app, ["predict", uid, "-w", str(workspace.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert 0.0 <= out["models"]["churn"]["probability"] <= 1.0
    assert "churn" not in out["missing"]

    res = runner.invoke(app, ["predict", "nobody", "-w", str(workspace.root)])
    assert res.exit_code == 2 and "unknown user" in res.output

    res = runner.invoke(app, ["train", "bogus", "-w", str(workspace.root)])
    assert res.exit_code == 2 and "unknown train target" in res.output


def test_rfm_features_on_a_hand_example():
    from shopsight.behavior.features import rfm_features

    t = pd.Timestamp("2024-03-01", tz="UTC")
    rows = [  # user, days before asof, event, price, qty, category, session
        ("a", 40.5, "purchase", 10.0, 2, "shoes", "s1"),
        ("a", 40.4, "purchase", 5.0, 1, "hats", "s1"),  # same calendar day: one purchase day
        ("a", 10.5, "purchase", 30.0, 1, "shoes", "s2"),
        ("a", 2.0, "view", 30.0, 1, "shoes", "s3"),
        ("b", 20.0, "view", 9.0, 1, "hats", "s4"),
        ("b", -1.0, "purchase", 9.0, 1, "hats", "s5"),  # after asof: invisible
    ]
    ev = pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "ts": [t - pd.Timedelta(days=r[1]) for r in rows],
        "event": [r[2] for r in rows], "price": [r[3] for r in rows], "quantity": [r[4] for r in rows],
        "category": [r[5] for r in rows], "session_id": [r[6] for r in rows],
    })
    f = rfm_features(ev, t, categories=["shoes"])

    a, b = f.loc["a"], f.loc["b"]
    assert list(f.index) == ["a", "b"]
    assert (a["frequency"], a["repeat_days"], a["monetary"]) == (2.0, 1.0, 55.0)
    assert a["recency_days"] == pytest.approx(11.0)  # midnight of the purchase day, 10.5 days ago
    assert a["gap_mean_days"] == pytest.approx(30.0) and np.isnan(a["gap_std_days"])
    assert (a["buys_14d"], a["spend_14d"], a["buys_60d"], a["events_7d"]) == (1.0, 30.0, 2.0, 1.0)
    assert a["share_shoes"] == pytest.approx(50 / 55)
    assert (a["views_30d"], a["sessions_30d"]) == (1.0, 2.0)
    assert (b["has_purchase"], b["frequency"], b["monetary"]) == (0.0, 0.0, 0.0)
    assert b["recency_days"] == pytest.approx(20.0)  # never bought: counts from the first event


def test_rfm_features_for_users_who_never_bought():
    from shopsight.behavior.features import rfm_features

    t = pd.Timestamp("2024-03-01", tz="UTC")
    ev = pd.DataFrame({"user_id": ["x"], "ts": [t - pd.Timedelta(days=3)], "event": ["view"], "price": [None],
                       "quantity": [1], "category": [None], "session_id": ["s"]})
    f = rfm_features(ev, t, categories=["shoes"])
    assert f.loc["x", "frequency"] == 0.0 and f.loc["x", "recency_days"] == pytest.approx(3.0)
    assert f.loc["x", "share_shoes"] == 0.0 and np.isnan(f.loc["x", "gap_mean_days"])
