"""Reasons as sentences: explain()'s ``reasons`` follow the contract, keep to the explanation's numbers, merge what
says one thing, measure ``without`` at the typical values, cite where and when a rule fired."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.models import load_model, train_model
from shopsight.behavior.models.churn import end_of_events
from shopsight.behavior.models.common import SEQUENCE_FACTOR, TrainSettings
from shopsight.behavior.models.reasons import effect
from shopsight.behavior.models.rules import rows_of_users
from shopsight.behavior.synthetic import write_shop
from shopsight.behavior.workspace import Workspace
from shopsight.tools.numbers import matches, numbers_in

SETTINGS = TrainSettings(epochs=3, patience=2, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=1e6)
PARAMS: dict[str, dict[str, Any]] = {
    "churn": {"horizon_days": 14, "n_snapshots": 3},
    "intent": {"n_snapshots": 3, "max_train_sessions": 2000, "session_max_len": 8},
    "risk": {"ae_epochs": 10, "n_folds": 3},
}
KEYS = ["kind", "key", "sentence", "direction", "features", "value", "typical", "without", "session_id", "day"]
ACTIVITY = {"events_30d", "events_90d", "views_30d", "sessions_30d"}
DAY_LABEL = re.compile(r"\b\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """A 300-user demo shop with the three models trained and saved (cards with typical values), as `shopsight train` does."""
    ws = Workspace(tmp_path_factory.mktemp("reasons") / "ws")
    write_shop(ws.root, users=300, days=75, seed=11)
    events = ws.load_events()
    for name in ("churn", "risk", "intent"):
        train_model(ws, name, settings=SETTINGS, events=events, **PARAMS[name])
    return ws


@pytest.fixture(scope="module")
def events(ws):
    return ws.load_events()


@pytest.fixture(scope="module")
def labels(ws):
    return ws.load_labels("users").set_index("user_id")


@pytest.fixture(scope="module")
def models(ws):
    return {name: load_model(ws, name) for name in ("churn", "risk", "intent")}


@pytest.fixture(scope="module")
def explained(models, events, labels):
    """Explanations of a spread of users per model: highest and lowest scores, every fraud, some others."""
    users = sorted(events["user_id"].astype(str).unique())
    out: dict[str, list[dict[str, Any]]] = {}
    for name, model in models.items():
        p = model.predict_proba(events)
        picks = list(dict.fromkeys([p.idxmax(), p.idxmin(), *users[::25], *labels.index[labels["is_fraud"]]]))
        out[name] = [model.explain(events, u) for u in picks]
    return out


def _numbers(obj: Any) -> list[float]:
    """Every number of an explanation outside the reasons' sentences (what the grounding guard may check against)."""
    found: list[float] = []
    if isinstance(obj, bool) or obj is None:
        return found
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, str):
        return [n.value for n in numbers_in(obj)]
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "sentence":
                found += _numbers(v)
        return found
    if isinstance(obj, (list, tuple)):
        found.append(float(len(obj)))
        for v in obj:
            found += _numbers(v)
    return found


def test_every_feature_of_the_saved_specs_has_a_glossary_entry(ws, models):
    """What a trained model can name as a factor is its spec's scaler columns and the behaviour sentence."""
    for name, model in models.items():
        spec = json.loads((ws.models_dir / name / "v1" / "spec.json").read_text())
        scalers = {"user_scaler": model.glossary(), "session_scaler": model.session_glossary()} if name == "intent" else {"scaler": model.glossary()}
        for key, glossary in scalers.items():
            assert glossary.missing([*spec[key]["columns"], SEQUENCE_FACTOR]) == [], (name, key)


def test_every_explanation_keeps_its_keys_and_adds_reasons_in_the_contract(explained, models):
    for name, explanations in explained.items():
        for e in explanations:
            assert {"model", "user_id", "probability", "factors", "rules", "evidence"} <= set(e)
            names = set(models[name].scaler_.columns if name != "intent" else models[name].user_scaler_.columns) | {SEQUENCE_FACTOR}
            fired = {r["name"] for r in e["rules"] if r["fired"]}
            assert e["reasons"], (name, e["user_id"])
            for r in e["reasons"]:
                assert list(r) == KEYS
                assert r["kind"] in ("rule", "factor") and r["direction"] in ("raises", "lowers")
                assert r["features"] and set(r["features"]) <= names, r
                assert all(v is None or isinstance(v, (int, float)) for v in (r["value"], r["typical"], r["without"]))
                assert r["day"] is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["day"])
                if r["kind"] == "rule":
                    assert r["key"] in fired, r  # a rule that did not fire is no reason
                # a typical value sits in brackets beside what it describes, never as a clause of its own
                assert "; typical for" not in r["sentence"] and not r["sentence"].startswith("typical"), r["sentence"]
            # every fired rule speaks in a rule reason (two rules on the same features share one)
            glossary = models[name].glossary()
            covered = {f for r in e["reasons"] if r["kind"] == "rule" for f in r["features"]}
            assert all(glossary.rules[n].feature in covered for n in fired), (fired, e["reasons"])


def test_sentences_are_words_whose_numbers_the_explanation_carries(explained):
    for explanations in explained.values():
        for e in explanations:
            carried = _numbers(e)
            for r in e["reasons"]:
                text = r["sentence"]
                assert not re.search(r"[a-z]_[a-z]", text), text  # no field names
                if r["day"]:
                    label = f"{pd.Timestamp(r['day']).day} {pd.Timestamp(r['day']):%b}"
                    assert label in text, (label, text)
                    text = text.replace(label, "")  # "2 Apr" is the reason's ``day``
                assert not DAY_LABEL.search(text), text
                for shown in numbers_in(text):
                    assert any(matches(shown, v) for v in carried), (shown.text, r["sentence"])


def test_no_feature_speaks_in_two_reasons(explained):
    for explanations in explained.values():
        for e in explanations:
            features = [f for r in e["reasons"] for f in r["features"]]
            assert len(features) == len(set(features)), e["user_id"]


def test_correlated_activity_features_are_one_reason(explained):
    silent = [(e, r) for e in explained["churn"] for r in e["reasons"]
              if r["key"] == "activity" and r["sentence"].startswith(("no activity in the past month", "no activity at all"))]
    assert silent, "some explained user has been silent for a month"
    for e, r in silent:
        assert ACTIVITY <= set(r["features"])
        assert sum(bool(ACTIVITY & set(x["features"])) for x in e["reasons"]) == 1
        assert r["direction"] == "raises" and r["value"] >= 30  # "last seen N days ago", N the reason's value


def test_without_is_the_probability_with_the_reasons_features_at_their_typical_values(models, events, explained):
    model = models["churn"]
    asof = end_of_events(events)
    for e in explained["churn"][:6]:
        mine = events[rows_of_users(events, [e["user_id"]])]
        users = pd.Index([e["user_id"]], name="user_id")
        feats, seqs = model._features_at(mine, asof, users)
        for r in e["reasons"]:
            if r["features"] == [SEQUENCE_FACTOR]:
                continue
            changed = feats.copy()
            for f in r["features"]:
                changed[f] = model.typical_.get(f, np.nan)  # no typical value: the training mean (a missing value scales to it)
            assert model._predict_arrays(changed, seqs)[0] == pytest.approx(r["without"], abs=2e-4), r


def test_a_value_at_its_typical_is_no_reason(models, events, explained):
    for e in explained["churn"]:
        for r in e["reasons"]:
            if r["kind"] == "factor" and r["without"] is not None:
                assert abs(e["probability"] - r["without"]) >= 0.0004, r  # MIN_EFFECT, after rounding


def test_fired_rules_say_what_fired_when_and_where(models, events, labels):
    testers = [u for u in labels.index[labels["fraud_type"] == "card_testing"]]
    assert testers
    for u in testers:
        e = models["risk"].explain(events, u)
        burst = next(r for r in e["rules"] if r["name"] == "card_testing_burst")
        assert burst["fired"]
        reason = next(r for r in e["reasons"] if r["key"] == "card_testing_burst")
        orders = events[events["order_id"].isin(burst["evidence"])]
        first = orders.sort_values("ts").iloc[0]
        assert reason["kind"] == "rule" and reason["session_id"] == first["session_id"]
        assert reason["day"] == first["ts"].strftime("%Y-%m-%d")
        assert f"(session {first['session_id']})" in reason["sentence"]
        assert reason["value"] == burst["value"] and reason["sentence"].startswith(f"{int(burst['value'])} orders of at most 5 each")
        assert set(reason["features"]) >= {"rule_card_testing_burst", "rule_card_testing_burst_fired"}


def _descending(p: float, part: list[dict[str, Any]]) -> bool:
    """Whether ``part`` is ordered by falling effect, allowing for ``without`` rounded to 4 places."""
    for a, b in zip(part, part[1:]):
        if a["without"] is None or b["without"] is None:
            continue
        slack = 2e-4 / max(b["without"] * (1 - b["without"]), 1e-4)  # a rounding step in log-odds
        if effect(p, a["without"]) < effect(p, b["without"]) - slack:
            return False
    return True


def test_reasons_come_in_each_models_measured_order(models, explained):
    for name, explanations in explained.items():
        for e in explanations:
            reasons, p = e["reasons"], e["probability"]
            parts = [reasons]
            if models[name].reason_ordering == "verdict":
                towards = "raises" if p >= e["threshold"] else "lowers"
                agree = [r["direction"] == towards for r in reasons]
                assert agree == sorted(agree, reverse=True), (name, e["user_id"])  # every reason for the verdict before any against it
                parts = [[r for r in reasons if (r["direction"] == towards) == side] for side in (True, False)]
            assert all(_descending(p, part) for part in parts), (name, e["user_id"])


def test_typical_values_are_saved_in_the_card_and_read_back(ws, models):
    for name, model in models.items():
        card = json.loads((ws.models_dir / name / "v1" / "card.json").read_text())
        rec = card["typical_values"]
        assert rec["population"] == model.typical_population and "median" in rec["statistic"] and rec["definition"]
        assert rec["values"] and model.typical_ == rec["values"]
        names = model.scaler_.columns if name != "intent" else model.user_scaler_.columns
        assert set(rec["values"]) <= set(names)
    intent_card = json.loads((ws.models_dir / "intent" / "v1" / "card.json").read_text())
    assert models["intent"].session_typical_ == intent_card["session_typical_values"]["values"] != {}


def test_a_model_saved_before_typical_values_still_explains_in_words(ws, events):
    model = load_model(ws, "churn")
    model.typical_ = {}  # what a card written before them gives
    user = sorted(events["user_id"].astype(str).unique())[3]
    reasons = model.explain(events, user)["reasons"]
    assert reasons and all(r["typical"] is None and "typical" not in r["sentence"] for r in reasons)
    assert all(isinstance(r["without"], float) for r in reasons)


def test_session_and_unsupervised_explanations_have_reasons_too(ws, models, events, labels):
    from shopsight.behavior.models.risk import RiskModel

    sid = str(events["session_id"].iloc[len(events) // 2])
    out = models["intent"].explain_session(events, sid)
    if out["probability"] is not None:
        assert all(list(r) == KEYS for r in out["reasons"])
        assert set(models["intent"].session_typical_) <= set(models["intent"].session_scaler_.columns)
    unsupervised = RiskModel(ae_epochs=5, n_folds=2, settings=SETTINGS).fit(events)
    fraud = str(labels.index[labels["fraud_type"] == "card_testing"][0])
    e = unsupervised.explain(events, fraud)
    assert e["reasons"] and all(0.0 <= r["without"] <= 1.0 for r in e["reasons"] if r["without"] is not None)
    assert any(r["key"] == "card_testing_burst" for r in e["reasons"])


def test_a_new_device_named_in_a_reason_is_masked(models, events, labels):
    victims = [(u, r) for u in labels.index[labels["fraud_type"] == "account_takeover"]
               for r in models["risk"].explain(events, u)["rules"] if r["name"] == "new_device_high_value" and r["fired"]]
    assert victims, "a takeover in this shop fires the new-device rule"
    u, rule = victims[0]
    tampered = events.copy()
    tampered["device"] = tampered["device"].astype(object)
    tampered.loc[tampered["order_id"] == rule["evidence"][0], "device"] = "Alice's phone +1 415 555 0134"  # free text with a phone
    reason = next(r for r in models["risk"].explain(tampered, u)["reasons"] if r["key"] == "new_device_high_value")
    assert "555 0134" not in reason["sentence"] and "Alice's phone" in reason["sentence"], reason["sentence"]
