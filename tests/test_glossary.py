"""The glossary: every feature and rule a model can name has words, and the words state only their own numbers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.features import rfm_features, top_categories
from shopsight.behavior.models.churn import ChurnModel, churn_rules, end_of_events
from shopsight.behavior.models.common import SEQUENCE_FACTOR
from shopsight.behavior.models.glossary import Glossary, day_of, glossary_table, show_days, typical_values
from shopsight.behavior.models.intent import (
    IntentModel,
    session_examples,
    session_feature_names,
    user_intent_features,
)
from shopsight.behavior.models.risk import RiskModel, risk_features
from shopsight.behavior.models.rules import RULE_NAMES
from shopsight.behavior.synthetic import generate_shop
from shopsight.tools.numbers import matches, numbers_in

SNAKE = re.compile(r"[A-Za-z]_[A-Za-z]")


@pytest.fixture(scope="module")
def shop():
    return generate_shop(users=150, days=60, seed=3)


@pytest.fixture(scope="module")
def asof(shop):
    return end_of_events(shop.events)


def _intent() -> IntentModel:
    model = IntentModel()
    model.devices_ = ["desktop", "mobile", "tablet"]
    return model


def test_every_churn_feature_has_a_glossary_entry(shop, asof):
    names = list(rfm_features(shop.events, asof, categories=top_categories(shop.events, 6)).columns) + [SEQUENCE_FACTOR]
    assert ChurnModel().glossary().missing(names) == []


def test_every_intent_feature_user_and_session_has_a_glossary_entry(shop, asof):
    model = _intent()
    user = list(user_intent_features(shop.events, asof, top_categories(shop.events, 6)).columns) + [SEQUENCE_FACTOR]
    assert model.glossary().missing(user) == []
    session = session_feature_names(model.devices_)
    assert set(session) <= set(session_examples(shop.events, model.devices_).columns)  # the names are the frame's
    assert model.session_glossary().missing(session) == []


def test_every_risk_feature_has_a_glossary_entry(shop, asof):
    names = list(risk_features(shop.events, asof).columns) + ["anomaly_score", SEQUENCE_FACTOR]
    assert RiskModel().glossary().missing(names) == []


def test_every_rule_has_words_for_what_fired():
    assert set(RULE_NAMES) <= set(RiskModel().glossary().rules)
    assert {r["name"] for r in churn_rules({}, 30)} <= set(ChurnModel().glossary().rules)
    for glossary in (RiskModel().glossary(), ChurnModel().glossary()):
        for name, rule in glossary.rules.items():
            assert rule.what and rule.fires_when, name
            assert rule.feature is None or glossary.has(rule.feature), name
            assert rule.typical_of is None or glossary.has(rule.typical_of), name


def test_a_feature_without_an_entry_is_named():
    glossary = ChurnModel().glossary()
    assert glossary.missing(["recency_days", "brand_new_feature"]) == ["brand_new_feature"]
    with pytest.raises(KeyError, match="brand_new_feature"):
        glossary.term("brand_new_feature")


def _all_terms(shop, asof) -> list[tuple[str, Glossary]]:
    churn, intent, risk = ChurnModel().glossary(), _intent(), RiskModel().glossary()
    out = [(n, churn) for n in rfm_features(shop.events, asof, categories=["Books"]).columns]
    out += [(n, intent.glossary()) for n in user_intent_features(shop.events, asof).columns]
    out += [(n, intent.session_glossary()) for n in session_feature_names(intent.devices_)]
    out += [(n, risk) for n in list(risk_features(shop.events, asof).columns) + ["anomaly_score"]]
    return out + [(SEQUENCE_FACTOR, churn)]


@pytest.mark.parametrize("value", [0.0, 1.0, 2.5, 0.84, 37.25, 1234.5, -1.0, -2.0])
def test_every_sentence_is_words_that_state_only_its_value(shop, asof, value):
    for name, glossary in _all_terms(shop, asof):
        term = glossary.term(name)
        if term.kind in ("fraction", "flag") and not 0 <= value <= 1:
            continue  # shares and flags live in [0, 1]
        sentence = term.say(value, {})
        assert sentence and not SNAKE.search(sentence), (name, sentence)
        for shown in numbers_in(sentence):
            assert matches(shown, value), (name, value, sentence)
        clause = term.typical_clause(value, glossary.population)
        assert all(matches(n, value) for n in numbers_in(clause)), (name, clause)


def test_typical_values_are_medians_or_for_shares_and_flags_means_without_sentinels():
    glossary = RiskModel().glossary()
    X = pd.DataFrame({
        "n_orders": [0.0, 1.0, 2.0, 10.0],  # a count: the median
        "login_share": [0.1, 0.1, 0.1, 0.5],  # a share: the mean
        "rule_velocity_fired": [0.0, 0.0, 0.0, 1.0],  # a flag: the share of the population
        "hours_signup_to_first_order": [-1.0, -1.0, 4.0, 8.0],  # -1 = no order yet: not a value
        "gap_mean_days": [np.nan, 2.0, 4.0, np.nan],  # missing values are skipped
        "not_a_feature": [1.0, 2.0, 3.0, 4.0],
    })
    typical = typical_values(X, glossary)
    assert typical == {"n_orders": 1.5, "login_share": 0.2, "rule_velocity_fired": 0.25, "hours_signup_to_first_order": 6.0, "gap_mean_days": 3.0}


def test_dates_and_days_read_as_people_write_them():
    assert day_of(pd.Timestamp("2026-04-02T10:03:00Z")) == ("2 Apr", "2026-04-02")
    assert day_of(None) is None
    assert (show_days(119.157), show_days(2.34), show_days(1.0), show_days(0.04)) == ("119 days", "2.3 days", "1 day", "0 days")


def test_the_glossary_lists_a_models_features_with_phrase_and_reading():
    rows = glossary_table(ChurnModel().glossary(), ["views_30d", "share_Books"])
    assert rows == [
        {"name": "views_30d", "phrase": "product views in the past month", "reading": "product page views in the 30 days before the as-of time"},
        {"name": "share_Books", "phrase": "share of purchase spend on Books", "reading": "spend on Books / all purchase spend (0 when nothing was bought)"},
    ]
