"""The mechanism eval: its mapping from the shop's ground truth to reason keys, its cases, and (slow) the measure."""

from __future__ import annotations

import pandas as pd
import pytest

from shopsight.behavior.models.churn import ChurnModel, churn_rules
from shopsight.behavior.models.risk import RiskModel
from shopsight.behavior.models.rules import RULE_NAMES
from shopsight.behavior.synthetic import FRAUD_TYPES, generate_shop
from shopsight.evals.mechanisms import (
    CHURN_MECHANISMS,
    FRAUD_MECHANISMS,
    MECHANISMS,
    churn_truth,
    first_reason_names,
    fraud_truth,
    named_in_top,
    score_cases,
    totals,
)


@pytest.fixture(scope="module")
def shop():
    return generate_shop(users=300, days=75, seed=11)


def _reason(key: str, direction: str = "raises", without: float | None = 0.1, kind: str = "factor") -> dict:
    return {"kind": kind, "key": key, "sentence": "", "direction": direction, "features": [key], "value": None, "typical": None,
            "without": without, "session_id": None, "day": None}


def test_every_fraud_type_and_both_lapses_have_a_mechanism():
    assert set(FRAUD_MECHANISMS) == set(FRAUD_TYPES)
    assert set(MECHANISMS) == set(FRAUD_TYPES) | set(CHURN_MECHANISMS)
    assert all(m.what and m.keys for m in MECHANISMS.values())


def test_every_key_of_the_mapping_is_one_a_reason_can_carry():
    """A renamed group or rule must not silently turn hits into misses."""
    risk, churn = RiskModel().glossary(), ChurnModel().glossary()
    keys = set(RULE_NAMES) | {r["name"] for r in churn_rules({}, 30)}
    for glossary in (risk, churn):
        keys |= {g.name for g in glossary.groups} | set(glossary.terms)
    for name, mech in MECHANISMS.items():
        assert mech.keys <= keys, (name, mech.keys - keys)


def test_churners_are_split_into_gone_and_fading_by_their_dropout(shop):
    labels = shop.labels["users"]
    asof = pd.Timestamp(shop.events["ts"].max()).floor("D") - pd.Timedelta(days=20)
    truth = churn_truth(labels, labels["user_id"], asof, 14)
    lab = labels.set_index("user_id")
    assert truth and set(truth.values()) == {"churn_gone", "churn_fading"}
    for u, how in truth.items():
        drop = lab.at[u, "dropout_ts"]
        assert drop < asof + pd.Timedelta(days=14)
        assert (how == "churn_gone") == (drop < asof)
        assert lab.at[u, "segment"] != "fraud_account"
    late = lab.index[lab["dropout_ts"].notna() & (lab["dropout_ts"] >= asof + pd.Timedelta(days=14))]
    assert not set(late) & set(truth)


def test_frauds_keep_their_type(shop):
    labels = shop.labels["users"]
    truth = fraud_truth(labels, labels["user_id"])
    assert set(truth.values()) == set(FRAUD_TYPES)
    assert len(truth) == int(labels["is_fraud"].sum())


def test_only_a_first_reason_that_raises_the_score_with_the_right_key_names_it():
    e = {"probability": 0.9, "threshold": 0.5, "reasons": [_reason("card_testing_burst", kind="rule"), _reason("activity")]}
    assert first_reason_names(e, "card_testing")
    assert not first_reason_names(e, "bot")
    assert not first_reason_names({**e, "reasons": [_reason("card_testing_burst", "lowers")]}, "card_testing")
    assert not first_reason_names({**e, "reasons": []}, "card_testing")
    assert named_in_top(e, "churn_gone") and not first_reason_names(e, "churn_gone")


def test_orderings_are_compared_on_the_same_reasons():
    # the rule moved the score less than the activity factor: by effect the factor leads, rules-first the rule
    e = {"probability": 0.9, "threshold": 0.5, "reasons": [_reason("velocity", without=0.85, kind="rule"), _reason("activity", without=0.2)]}
    assert first_reason_names(e, "card_testing", "rules_first")
    assert not first_reason_names(e, "card_testing", "logit")
    assert first_reason_names(e, "churn_fading", "logit")


def test_scores_count_per_type_and_split_and_pool():
    from shopsight.evals.mechanisms import Case

    hit = {"probability": 0.9, "threshold": 0.5, "reasons": [_reason("bot_velocity", kind="rule")]}
    miss = {"probability": 0.2, "threshold": 0.5, "reasons": [_reason("activity", "lowers")]}
    cases = [Case("a", "bot", "test", hit), Case("b", "bot", "test", miss), Case("c", "churn_gone", "test", miss),
             Case("d", "bot", "train", hit)]
    rows = {(r["type"], r["split"]): r for r in score_cases(cases)}
    assert rows[("bot", "test")] == {"type": "bot", "split": "test", "n": 2, "first_reason_names_it": 1, "rate": 0.5,
                                     "named_in_top_3": 1, "flagged": 1}
    pooled = totals(list(rows.values()))
    assert pooled["overall"] == {"n": 3, "first_reason_names_it": 1, "rate": 0.333, "mean_of_type_rates": 0.25}
    assert pooled["fraud"]["n"] == 2 and pooled["churn"]["rate"] == 0.0


@pytest.mark.slow
def test_the_measure_on_a_small_trained_demo_is_consistent(tmp_path):
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings
    from shopsight.behavior.workspace import Workspace
    from shopsight.evals.mechanisms import measure

    ws = Workspace(tmp_path / "ws")
    build_demo_workspace(ws, users=400, days=100, seed=7, progress=False)
    events = ws.load_events()
    for name in ("churn", "risk"):
        train_model(ws, name, events=events, settings=TrainSettings(epochs=5))
    out = measure(ws)
    labels = ws.load_labels("users")
    assert sum(r["n"] for r in out["by_type"] if r["type"] in FRAUD_MECHANISMS) == int(labels["is_fraud"].sum())
    for r in out["by_type"]:
        assert 0 <= r["first_reason_names_it"] <= r["named_in_top_3"] <= r["n"] and r["rate"] == round(r["first_reason_names_it"] / r["n"], 3)
    assert out["test"]["churn"]["n"] > 50 and out["test"]["overall"]["rate"] is not None
    assert set(out["orderings"]) == {"logit", "probability", "rules_first", "verdict"}
    assert out["typical_values"] == {"churn": True, "risk": True}
