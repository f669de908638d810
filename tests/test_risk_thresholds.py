"""Decision thresholds on the risk model card, setting them (versioned with the model), and score_risk's decision."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shopsight.behavior.models.decision import (
    HARD_RULES,
    DecisionPolicy,
    ThresholdError,
    at_threshold,
    choose_thresholds,
    load_policy,
    risk_card,
    set_thresholds,
    thresholds_path,
    validation_scores,
)
from risk_workspace import card_testing_order, trained_risk_workspace
from shopsight.tools import default_registry
from shopsight.tools.context import ToolContext

REGISTRY = default_registry()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_risk_workspace(tmp_path_factory.mktemp("thresholds") / "ws")


@pytest.fixture
def ws(tmp_path):
    return trained_risk_workspace(tmp_path / "ws")


def test_precision_and_recall_at_a_threshold_count_the_validation_accounts():
    p = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.2, 0.005, 0.001])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    scores = validation_scores(p, y)
    assert scores["honest_below"] == 1 and scores["n"] == 8  # the 0.005 honest account is only counted
    at = at_threshold(scores, 0.6)
    assert (at["frauds_caught"], at["flagged"]) == (3, 4)  # 0.9, 0.8, 0.6 fraud; 0.7 honest
    assert at["precision"] == 0.75 and at["recall"] == 0.75
    assert at_threshold(scores, 0.95)["precision"] is None  # nothing flagged: precision undefined, not 0
    with pytest.raises(ThresholdError, match="below 0.01"):
        at_threshold(scores, 0.001)


def test_block_is_the_lowest_threshold_precise_enough_and_never_below_review():
    p = np.array([0.95, 0.9, 0.85, 0.5, 0.45, 0.4, 0.3, 0.1])
    y = np.array([1, 1, 1, 1, 0, 1, 0, 0])
    chosen = choose_thresholds(p, y, review=0.3, source="test")
    assert chosen["review"]["threshold"] == 0.3
    assert chosen["block"]["threshold"] == 0.5 and chosen["block"]["precision"] == 1.0
    assert chosen["block"]["threshold"] >= chosen["review"]["threshold"]
    noisy = choose_thresholds(np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]), review=0.2, source="test")
    assert "no threshold reaches" in noisy["block"]["how"]  # the card does not claim a precision it lacks


def test_the_trained_card_carries_review_and_block_chosen_on_validation(trained):
    card = risk_card(trained)
    d = card["decision_thresholds"]
    assert d["supervised"] and "out-of-fold" in d["chosen_on"]
    assert d["review"]["threshold"] <= d["block"]["threshold"]
    for name in ("review", "block"):  # the precision and recall stated are those of the stored validation scores
        again = at_threshold(d["validation_scores"], d[name]["threshold"])
        assert (d[name]["precision"], d[name]["recall"]) == (again["precision"], again["recall"])
        assert set(d["test"][name]) >= {"precision", "recall"}
    assert d["validation_scores"]["n"] == card["split"]["n_train"]
    assert d["hard_rules"] == HARD_RULES


def test_setting_thresholds_writes_a_record_that_names_the_model_version_and_keeps_history(ws):
    card = risk_card(ws)
    record = set_thresholds(ws, card, review=0.3, block=0.9)
    path = thresholds_path(ws, card["version"])
    assert json.loads(path.read_text())["model"] == f"risk@{card['version']}" == record["model"]
    policy = load_policy(ws, card)
    assert (policy.review, policy.block) == (0.3, 0.9) and policy.source.startswith("set by")
    assert policy.review_precision == at_threshold(card["decision_thresholds"]["validation_scores"], 0.3)["precision"]
    set_thresholds(ws, card, review=0.2, block=0.8)
    again = json.loads(path.read_text())
    assert [h["review"]["threshold"] for h in again["history"]] == [0.3]
    # the card itself is untouched: a retrained version starts from its own validation thresholds
    assert risk_card(ws)["decision_thresholds"] == card["decision_thresholds"]


@pytest.mark.parametrize("review, block, words", [(0.9, 0.3, "below --review"), (0.0, 0.5, "not a probability"), (0.3, 1.5, "not a probability")])
def test_unusable_thresholds_are_refused_with_the_reason(ws, review, block, words):
    with pytest.raises(ThresholdError, match=words):
        set_thresholds(ws, risk_card(ws), review=review, block=block)


def test_a_card_from_before_thresholds_has_no_policy_and_cannot_be_priced(ws):
    card = {k: v for k, v in risk_card(ws).items() if k != "decision_thresholds"}
    assert load_policy(ws, card) is None
    with pytest.raises(ThresholdError, match="retrain"):
        set_thresholds(ws, card, review=0.3, block=0.9)


def test_cli_sets_and_shows_thresholds_with_their_precision(ws):
    from shopsight.cli import app

    result = CliRunner().invoke(app, ["risk", "thresholds", "--review", "0.3", "--block", "0.9", "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "Decision thresholds of risk@v1" in result.output and "0.300" in result.output and "0.900" in result.output
    shown = CliRunner().invoke(app, ["risk", "thresholds", "--json", "--workspace", str(ws.root)])
    assert json.loads(shown.output)["block"]["threshold"] == 0.9
    bad = CliRunner().invoke(app, ["risk", "thresholds", "--review", "0.9", "--block", "0.2", "--workspace", str(ws.root)])
    assert bad.exit_code == 2 and "below --review" in bad.output


def _policy(**kw) -> DecisionPolicy:
    return DecisionPolicy(model="risk@v1", review=0.3, block=0.9, review_precision=0.6, block_precision=0.97,
                          review_recall=0.8, block_recall=0.5, source="test", **kw)


def test_a_hard_rule_forces_its_decision_whatever_the_model_says():
    burst = {"name": "card_testing_burst", "fired": True, "detail": "5 orders of at most 5 within 1 h", "evidence": ["o1", "o2"]}
    d = _policy().decide(0.01, [burst, {"name": "velocity", "fired": False, "detail": "", "evidence": []}])
    assert (d.decision, d.decided_by, d.forced_by["name"]) == ("block", "rule", "card_testing_burst")
    assert [r["name"] for r in d.rules_fired] == ["card_testing_burst"]  # only fired rules are reasons
    # a rule forcing less than the model decides leaves the model's decision
    bot = {"name": "bot_velocity", "fired": True, "detail": "30 events a minute", "evidence": ["s1"]}
    d = _policy().decide(0.95, [bot])
    assert (d.decision, d.decided_by, d.expected_precision) == ("block", "model", 0.97)
    d = _policy().decide(0.5, [])
    assert (d.decision, d.threshold, d.expected_precision) == ("review", 0.3, 0.6)
    assert _policy().decide(0.1, []).decision == "allow"


def test_score_risk_blocks_a_card_testing_order_and_says_the_rule_forced_it(trained):
    ctx = ToolContext(trained)
    order = card_testing_order(ctx.get_events())
    r = REGISTRY.run(ctx, "score_risk", {"order_id": order})
    assert r["decision"] == "block" and r["decided_by"] == "rule"
    assert r["forced_by"]["name"] == "card_testing_burst" and order in r["forced_by"]["evidence"]
    text = REGISTRY.render("score_risk", {"order_id": order}, r)
    assert text.startswith(f"Decision for order {order}: block.") and "forces a block whatever the model says" in text
    facts = REGISTRY.key_facts("score_risk", {"order_id": order}, r, f"is order {order} fraudulent?")
    assert all(f.holds(text) for f in facts)
    assert not all(f.holds(text.replace("forces", "gives").replace("whatever the model says", "")) for f in facts)


def test_score_risk_reviews_an_order_above_the_review_threshold_with_its_expected_precision(ws):
    ctx = ToolContext(ws)
    events = ctx.get_events()
    order = str(events.loc[events["event"] == "purchase", "order_id"].iloc[0])
    p = REGISTRY.run(ctx, "score_risk", {"order_id": order})["probability"]
    card = risk_card(ws)
    set_thresholds(ws, card, review=max(0.01, round(p * 0.5, 4)), block=0.99)
    r = REGISTRY.run(ToolContext(ws), "score_risk", {"order_id": order})
    policy = load_policy(ws, card)
    assert r["decision"] == "review" and r["decided_by"] == "model"
    assert r["expected_precision"] == policy.review_precision and r["decision_threshold"] == policy.review
    text = REGISTRY.render("score_risk", {"order_id": order}, r)
    assert "hold for review" in text and f"Decision for order {order}" in text
