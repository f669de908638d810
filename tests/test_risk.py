"""Fraud risk: the supervised net and the autoencoder on a small synthetic shop, explanations, orders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shopsight.behavior.models.common import NotFittedError, TrainSettings
from shopsight.behavior.models.evaluation import evaluate, score_users
from shopsight.behavior.models.risk import RiskModel, account_features, risk_features
from shopsight.behavior.models.rules import RULE_NAMES
from shopsight.behavior.synthetic import generate_shop

TINY = TrainSettings(epochs=8, patience=3, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=60.0)


@pytest.fixture(scope="module")
def shop():
    return generate_shop(users=800, days=60, seed=11)


@pytest.fixture(scope="module")
def labels(shop):
    return shop.labels["users"]


@pytest.fixture(scope="module")
def fitted(shop, labels):
    return RiskModel(settings=TINY, ae_epochs=30).fit(shop.events, labels=labels)


@pytest.fixture(scope="module")
def unsupervised(shop):
    return RiskModel(settings=TINY, ae_epochs=30).fit(shop.events)


@pytest.fixture(scope="module")
def card(fitted, shop, labels):
    return evaluate(fitted, shop.events, labels=labels).card


def test_features_have_one_row_per_user_and_every_rule(shop):
    asof = shop.events["ts"].max() + pd.Timedelta(seconds=1)
    f = risk_features(shop.events, asof)
    assert set(f.index) == set(shop.events["user_id"].unique())
    for name in RULE_NAMES:
        assert f"rule_{name}" in f.columns and f[f"rule_{name}_fired"].isin([0.0, 1.0]).all()
    acc = account_features(shop.events, asof)
    cards = shop.labels["users"].query("fraud_type == 'card_testing'")["user_id"]
    honest = shop.labels["users"].query("not is_fraud")["user_id"]
    assert acc.loc[cards, "small_orders"].mean() > 5 * max(acc.loc[honest, "small_orders"].mean(), 0.1)


def test_autoencoder_scores_fraud_accounts_higher_than_honest_ones(unsupervised, shop, labels):
    score = unsupervised.anomaly_score(shop.events)
    fraud = labels.loc[labels["is_fraud"], "user_id"]
    honest = labels.loc[~labels["is_fraud"], "user_id"]
    assert score.between(0, 1).all()
    assert score.loc[fraud].mean() > score.loc[honest].mean() + 0.2
    # without labels, predict_proba is the anomaly percentile and the card says so
    np.testing.assert_allclose(unsupervised.predict_proba(shop.events).to_numpy(), score.to_numpy())
    card = evaluate(unsupervised, shop.events).card
    assert card["metrics"] is None and "anomaly" in card["task"] and card["note"]


def test_supervised_model_ranks_test_frauds_and_reports_beside_baselines(card):
    assert card["split"]["train_frauds"] >= 2 and card["split"]["test_frauds"] >= 1
    # Better than chance on accounts never seen in training, whose fraud types training may
    # barely have had (800 users hold ~15 frauds); the demo-scale numbers are in the report.
    assert card["metrics"]["roc_auc"] > 0.6
    assert {"logistic", "lightgbm", "any_rule_fired"} <= set(card["baselines"])
    assert card["anomaly_metrics"]["roc_auc"] is not None


def test_time_split_trains_only_on_accounts_and_events_before_the_cutoff(fitted, card, shop, labels):
    C = pd.Timestamp(card["data_window"]["test_cutoff"])
    first = shop.events.groupby("user_id")["ts"].min()
    assert card["split"]["n_train"] == int((first < C).sum())
    assert card["split"]["n_test"] == int((first >= C).sum())
    # Rewriting everything after the cutoff leaves the learned weights unchanged.
    after = shop.events["ts"] >= C
    scrambled = pd.concat([shop.events[~after], shop.events[after].assign(price=0.5, device="tablet")])
    other = RiskModel(settings=TINY, ae_epochs=30).fit(scrambled, labels=labels, cutoff=C)
    for a, b in ((fitted.net_, other.net_), (fitted.ae_, other.ae_)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_predict_proba_contract(fitted, shop):
    p = fitted.predict_proba(shop.events)
    assert p.between(0, 1).all() and len(p) == shop.events["user_id"].nunique()
    one = fitted.predict_proba(shop.events, [p.index[3]])
    assert one.iloc[0] == pytest.approx(p.iloc[3], abs=1e-6)  # the one-user fast path agrees with the full table
    with pytest.raises(KeyError, match="nobody"):
        fitted.predict_proba(shop.events, ["nobody"])


def test_explain_cites_fired_rules_with_the_users_own_evidence(fitted, shop, labels):
    user = labels.query("fraud_type == 'card_testing'")["user_id"].iloc[0]
    out = fitted.explain(shop.events, user)
    own_sessions = set(shop.events.loc[shop.events["user_id"] == user, "session_id"])
    own_orders = set(shop.events.loc[shop.events["user_id"] == user, "order_id"].dropna())
    assert out["user_id"] == user and 0 <= out["probability"] <= 1
    assert {r["name"] for r in out["rules"]} == set(RULE_NAMES)
    fired = {r["name"]: r for r in out["rules"] if r["fired"]}
    assert "card_testing_burst" in fired
    assert set(fired["card_testing_burst"]["evidence"]) <= own_orders
    assert out["evidence"] and {e["session_id"] for e in out["evidence"]} <= own_sessions
    assert any("card_testing_burst" in e["detail"] for e in out["evidence"])
    assert out["factors"] and all(f["direction"] in ("raises", "lowers") for f in out["factors"])


def test_unsupervised_explain_names_the_worst_reconstructed_features(unsupervised, shop, labels):
    user = labels.query("fraud_type == 'bot'")["user_id"].iloc[0]
    out = unsupervised.explain(shop.events, user)
    assert out["supervised"] is False and out["probability"] == out["anomaly_score"]
    assert len(out["factors"]) == 5 and all(f["direction"] == "raises" for f in out["factors"])


def test_score_order_judges_the_order_and_cites_its_session(fitted, shop, labels):
    user = labels.query("fraud_type == 'card_testing'")["user_id"].iloc[0]
    rows = shop.events[(shop.events["user_id"] == user) & (shop.events["event"] == "purchase")]
    order_id = rows["order_id"].iloc[-1]
    out = fitted.score_order(shop.events, order_id)
    assert out["order_id"] == order_id and out["user_id"] == user and 0 <= out["probability"] <= 1
    assert out["evidence"][0]["session_id"] == rows["session_id"].iloc[-1]
    names = [r["name"] for r in out["rules"]]
    assert {"velocity", "card_testing_burst", "new_device_high_value"} <= set(names)
    assert any(r["fired"] and r["name"] == "card_testing_burst" for r in out["rules"])
    with pytest.raises(KeyError):
        fitted.score_order(shop.events, "o-none")


def test_save_load_round_trip_gives_identical_predictions(fitted, unsupervised, shop, workspace):
    users = list(shop.events["user_id"].unique()[:40])
    for model in (fitted, unsupervised):
        version = model.save(workspace, scores=score_users(model, shop.events))
        loaded = RiskModel.load(workspace, version)
        assert loaded.supervised_ == model.supervised_ and loaded.thresholds == model.thresholds
        np.testing.assert_allclose(loaded.predict_proba(shop.events, users), model.predict_proba(shop.events, users), rtol=0, atol=1e-9)
    scores = pd.read_parquet(workspace.models_dir / "risk" / "v1" / "scores.parquet")
    assert {"user_id", "probability", "anomaly_score", "rules_fired"} <= set(scores.columns)


def test_unfitted_model_says_how_to_fix_it(shop):
    with pytest.raises(NotFittedError, match="shopsight train risk"):
        RiskModel().predict_proba(shop.events)


def _sample_users(shop, labels, n_random=25):
    """One account of every fraud type plus random ones (seeded): the users the one-user paths are checked on."""
    frauds = labels.dropna(subset=["fraud_type"]).groupby("fraud_type")["user_id"].first().tolist()
    everyone = pd.Series(sorted(shop.events["user_id"].unique()))
    return frauds + everyone.sample(n_random, random_state=3).tolist()


def test_one_user_rules_and_features_equal_the_batch_ones(shop, labels):
    from shopsight.behavior.models.rules import evaluate_rules, evaluate_rules_for_users, order_table, rule_features

    events = shop.events
    asof = events["ts"].max() + pd.Timedelta(seconds=1)
    batch = evaluate_rules(events)
    batch_features = risk_features(events, asof, rules=batch)
    linked = batch["linked_accounts"].users.query("value > 0").index[:10].tolist()
    assert linked  # the shop's promo rings share identifiers: the linked-accounts path is exercised
    for user in _sample_users(shop, labels) + linked:
        one = evaluate_rules_for_users(events, [user])
        for name in RULE_NAMES:
            a, b = batch[name].users.loc[user], one[name].users.loc[user]
            assert (a["value"], a["fired"], list(a["evidence"]), a["detail"]) == (b["value"], b["fired"], list(b["evidence"]), b["detail"]), (user, name)
        mine = events[events["user_id"] == user]
        own = risk_features(mine, asof, rules=one, orders=order_table(mine))
        pd.testing.assert_series_equal(own.loc[user], batch_features.loc[user], check_exact=True)
    assert rule_features(batch).loc[_sample_users(shop, labels)].filter(like="_fired").to_numpy().any()  # some rule fired among them


def test_one_user_scores_and_explanations_equal_the_batch_scores(fitted, shop, labels):
    users = _sample_users(shop, labels)
    batch = fitted.predict_proba(shop.events)
    one = pd.Series({u: fitted.predict_proba(shop.events, [u]).iloc[0] for u in users})
    # Same features bit for bit; only the net's float32 matmuls differ between a batch of one and many.
    np.testing.assert_allclose(one.to_numpy(), batch.loc[users].to_numpy(), rtol=0, atol=1e-6)
    for u in users[:8]:
        assert fitted.explain(shop.events, u)["probability"] == pytest.approx(batch.loc[u], abs=1e-4)  # explain rounds to 4 places


def test_cross_fitted_net_averages_one_net_per_fold_and_calibrates_out_of_fold(fitted, card):
    assert len(fitted.net_.members) == fitted.n_folds == 5
    # every training account was scored by the one fold net that never saw it
    assert card["out_of_fold_metrics"]["n"] == card["split"]["n_train"]
    assert card["out_of_fold_metrics"]["roc_auc"] > 0.6
    # the baselines under the same folds sit beside it, in and out of fold
    for name in ("logistic_folds", "lightgbm_folds"):
        assert card["baselines"][name]["n"] == card["split"]["n_test"]
        assert card["out_of_fold_baselines"][name]["n"] == card["split"]["n_train"]


def test_cross_fitted_baselines_score_each_fold_with_models_that_never_saw_it():
    from shopsight.behavior.models.baselines import cross_fitted_baselines

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600)})
    y = (X["a"] + 0.5 * rng.normal(size=600) > 0).to_numpy().astype("int64")
    folds = np.arange(600) % 3
    X_test = pd.DataFrame({"a": [-2.0, 2.0], "b": [0.0, 0.0]})
    out = cross_fitted_baselines(X, y, folds, X_test, seed=0, threads=1)
    assert set(out) == {"logistic", "lightgbm"}
    for res in out.values():
        assert res["oof"].shape == (600,) and res["proba"].shape == (2,)
        assert res["proba"][1] > 0.8 > 0.2 > res["proba"][0]
    # Scramble fold 0's labels: logistic regression's out-of-fold scores there must not move
    # (its fold-0 model never saw those rows), while the other folds' scores do.
    y2 = y.copy()
    y2[folds == 0] = rng.permutation(y2[folds == 0])
    again = cross_fitted_baselines(X, y2, folds, X_test, seed=0, threads=1)["logistic"]["oof"]
    np.testing.assert_allclose(again[folds == 0], out["logistic"]["oof"][folds == 0])
    assert not np.allclose(again[folds != 0], out["logistic"]["oof"][folds != 0])


def test_fold_ensemble_inference_runs_the_members_grus_as_one():
    """At inference the members' GRUs run as one block-diagonal GRU: the same logits as the members one by one
    (a batch, one sentence shared by many rows), and new weights (a load) rebuild it."""
    from shopsight.behavior.models.common import SequenceTabularNet
    from shopsight.behavior.models.risk import FoldEnsemble

    torch.manual_seed(3)
    members = [SequenceTabularNet(40, 7, emb_dim=5, hidden=6, token_dims=[2, 4, 5]) for _ in range(4)]
    ens = FoldEnsemble(members).eval()
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(1, 41, (9, 12), generator=gen)
    lengths = torch.tensor([12, 1, 5, 7, 12, 3, 9, 2, 11])
    tokens[1, 1:] = 0
    x = torch.randn(9, 7, generator=gen)

    def one_by_one(tok, lens, rows):
        return torch.stack([m(tok, lens, rows) for m in members]).mean(dim=0)

    with torch.no_grad():
        assert torch.allclose(ens(tokens, lengths, x), one_by_one(tokens, lengths, x), atol=1e-6)
        assert ens._fused is not None  # the fused path ran
        shared = ens(tokens[:1], lengths[:1], x)  # one sentence beside every row (feature ablation)
        assert shared.shape == (9,)
        assert torch.allclose(shared, one_by_one(tokens[:1], lengths[:1], x), atol=1e-6)
        before = ens(tokens, lengths, x)
        state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in members[2].state_dict().items()}
        members[2].load_state_dict(state)
        after = ens(tokens, lengths, x)
        assert not torch.allclose(before, after)
        assert torch.allclose(after, one_by_one(tokens, lengths, x), atol=1e-6)
    assert "_fused" not in "".join(ens.state_dict())  # not saved with the model
    ens.train()
    out = ens(tokens, lengths, x)  # training: the members' own GRUs, gradients flow to them
    out.sum().backward()
    assert members[0].gru.weight_hh_l0.grad is not None
