"""The named risk rules fire on constructed fraud and stay quiet on honest behaviour."""

from __future__ import annotations

import pandas as pd
import pytest

from shopsight.behavior.events import to_canonical
from shopsight.behavior.models.rules import (
    RULE_NAMES,
    RuleThresholds,
    bot_velocity,
    card_testing_burst,
    evaluate_rules,
    linked_accounts,
    new_device_high_value,
    order_table,
    refund_rate,
    rule_features,
    rules_for_order,
    rules_for_user,
    velocity,
)

T0 = pd.Timestamp("2026-03-02 10:00", tz="UTC")


def ev(user, minutes, event, session, *, price=20.0, order=None, device="dev-" , ip=None, country="DE", category="books"):
    return {
        "user_id": user,
        "ts": T0 + pd.Timedelta(minutes=minutes),
        "event": event,
        "item_id": "i1",
        "category": category,
        "price": price,
        "quantity": 1,
        "session_id": session,
        "device": device if device != "dev-" else f"dev-{user}",
        "country": country,
        "order_id": order,
        "ip": ip or f"10.0.0.{abs(hash(user)) % 200}",
        "payment": "card",
    }


def frame(rows):
    return to_canonical(pd.DataFrame(rows))


def honest_user(user, day_offset=0, orders=3):
    """A shopper with a few sessions a few days apart, each ending in one normal order."""
    rows = []
    for k in range(orders):
        m = (day_offset + 3 * k) * 1440
        s = f"{user}-s{k}"
        rows += [
            ev(user, m, "view", s),
            ev(user, m + 2, "view", s),
            ev(user, m + 5, "add_to_cart", s),
            ev(user, m + 7, "purchase", s, price=40.0, order=f"{user}-o{k}"),
        ]
    return rows


def test_card_testing_burst_fires_on_tiny_orders_in_an_hour_and_cites_them():
    rows = honest_user("h1")
    rows += [ev("f1", 0, "view", "f1-s0")]
    rows += [ev("f1", 1 + 3 * k, "purchase", "f1-s0", price=1.0, order=f"f1-o{k}") for k in range(6)]
    res = card_testing_burst(frame(rows))
    assert res.users.at["f1", "fired"]
    assert res.users.at["f1", "value"] == 6
    assert sorted(res.users.at["f1", "evidence"]) == sorted(f"f1-o{k}" for k in range(6))
    assert not res.users.at["h1", "fired"]
    assert res.orders.at["f1-o5", "fired"] and not res.orders.at["f1-o0", "fired"]


def test_card_testing_ignores_tiny_orders_spread_over_days():
    rows = [ev("u", 1440 * k, "purchase", f"u-s{k}", price=1.0, order=f"u-o{k}") for k in range(6)]
    assert not card_testing_burst(frame(rows)).users.at["u", "fired"]


def test_velocity_counts_orders_within_a_day():
    rows = honest_user("h1")
    rows += [ev("f", 60 * k, "purchase", f"f-s{k}", price=80.0, order=f"f-o{k}") for k in range(7)]
    res = velocity(frame(rows))
    assert res.users.at["f", "value"] == 7 and res.users.at["f", "fired"]
    assert res.users.at["h1", "value"] == 1 and not res.users.at["h1", "fired"]


def test_new_device_high_value_fires_on_takeover_order_only():
    rows = honest_user("victim")
    # Later: a session from a device and country never seen before, with a large order.
    rows += [
        ev("victim", 20 * 1440, "login", "victim-x", device="dev-attacker", country="RU"),
        ev("victim", 20 * 1440 + 1, "purchase", "victim-x", price=900.0, order="victim-big", device="dev-attacker", country="RU"),
    ]
    # Control: a user who buys big but always from their own device.
    rows += honest_user("rich")
    rows += [ev("rich", 20 * 1440, "purchase", "rich-x", price=900.0, order="rich-big")]
    res = new_device_high_value(frame(rows))
    assert res.users.at["victim", "fired"]
    assert res.users.at["victim", "evidence"] == ["victim-big"]
    assert res.orders.at["victim-big", "value"] == pytest.approx(900.0 / 40.0)
    assert "new device dev-attacker" in res.orders.at["victim-big", "detail"]
    assert not res.users.at["rich", "fired"]
    assert not res.orders.loc[["victim-o0", "victim-o1", "victim-o2"], "fired"].any()


def test_new_device_does_not_judge_a_users_first_session():
    rows = [ev("newbie", 0, "purchase", "n-s0", price=900.0, order="n-o0")]
    assert not new_device_high_value(frame(rows)).users.at["newbie", "fired"]


def test_refund_rate_fires_on_serial_returner_and_cites_refunded_orders():
    rows = honest_user("h1")
    rows += honest_user("r", orders=4)
    rows += [ev("r", (3 * k) * 1440 + 600, "refund", f"r-s{k}r", order=f"r-o{k}") for k in range(3)]
    res = refund_rate(frame(rows))
    assert res.users.at["r", "value"] == pytest.approx(0.75)
    assert res.users.at["r", "fired"]
    assert res.users.at["r", "evidence"] == ["r-o0", "r-o1", "r-o2"]
    assert res.users.at["h1", "value"] == 0 and not res.users.at["h1", "fired"]


def test_linked_accounts_via_shared_ip_but_not_via_generic_device_label():
    rows = []
    for k in range(40):  # honest crowd: everyone says device "mobile", each has an own IP
        rows += [ev(f"h{k}", k, "view", f"h{k}-s0", device="mobile", ip=f"192.168.1.{k}")]
    for k in range(4):  # a ring of accounts behind one IP
        rows += [ev(f"ring{k}", 100 + k, "view", f"ring{k}-s0", device="mobile", ip="203.0.113.9")]
    res = linked_accounts(frame(rows), RuleThresholds(linked_max_share=0.02))
    assert res.users.at["ring0", "value"] == 3
    assert res.users.at["ring0", "fired"]
    assert res.users.at["ring0", "evidence"] == ["ring0-s0"]
    assert not res.users.loc[[f"h{k}" for k in range(40)], "fired"].any()


def test_bot_velocity_fires_on_scripted_session_not_on_a_browser():
    rows = [ev("human", 0.5 * k, "view", "human-s0") for k in range(20)]  # 2 events/min
    bot_rows = [
        {**ev("bot", 0, "view", "bot-s0"), "ts": T0 + pd.Timedelta(seconds=2 * k)} for k in range(60)
    ]  # 30 events/min
    res = bot_velocity(frame(rows + bot_rows))
    assert res.users.at["bot", "fired"] and res.users.at["bot", "value"] == pytest.approx(60 / (118 / 60))
    assert res.users.at["bot", "evidence"] == ["bot-s0"]
    assert not res.users.at["human", "fired"]


def test_evaluate_rules_gives_every_rule_for_every_user_and_dicts_for_explain():
    rows = honest_user("h1") + [ev("f1", 1 + k, "purchase", "f1-s0", price=1.0, order=f"f1-o{k}") for k in range(5)]
    events = frame(rows)
    results = evaluate_rules(events)
    assert list(results) == list(RULE_NAMES)
    feats = rule_features(results)
    assert set(feats.index) == {"h1", "f1"}
    assert feats.at["f1", "rule_card_testing_burst_fired"] == 1.0
    assert feats.at["h1", "rule_card_testing_burst_fired"] == 0.0
    user_rules = rules_for_user(results, "f1")
    assert user_rules[0]["fired"] and {r["name"] for r in user_rules} == set(RULE_NAMES)
    assert set(user_rules[0]["evidence"]) <= set(order_table(events).index)
    order_rules = rules_for_order(results, "f1-o4")
    assert any(r["name"] == "card_testing_burst" and r["fired"] for r in order_rules)


def test_rules_tolerate_events_without_optional_columns():
    events = frame(honest_user("h1")).drop(columns=["device", "ip", "country", "payment", "order_id"])
    results = evaluate_rules(events)
    assert not rule_features(results).filter(like="_fired").to_numpy().any()
    # Without order ids each session with purchases is one order.
    assert list(order_table(events).index) == ["h1-s0", "h1-s1", "h1-s2"]


def test_users_without_orders_get_quiet_rules_and_a_typed_empty_order_table():
    events = frame([ev("browser", k, "view", "b-s0") for k in range(3)])
    orders = order_table(events)
    assert orders.empty and str(orders["ts"].dtype) == "datetime64[ns, UTC]"
    feats = rule_features(evaluate_rules(events))
    assert feats.loc["browser"].filter(like="_fired").sum() == 0
    orders.loc["x", "amount"] = 1.0  # the table is the caller's: editing it changes no later one
    assert order_table(events).empty


def test_rule_features_align_rules_that_judged_different_users():
    from shopsight.behavior.models.rules import RuleResult

    def judged(users, values):
        index = pd.Index(users, name="user_id")
        return RuleResult("r", 1.0, pd.DataFrame({"value": values, "fired": [v >= 1 for v in values]}, index=index))

    same = rule_features({"a": judged(["u1", "u2"], [2.0, 0.0]), "b": judged(["u1", "u2"], [0.0, 1.0])})
    assert same.index.tolist() == ["u1", "u2"] and same.index.name == "user_id"
    assert same.to_dict("list") == {"rule_a": [2.0, 0.0], "rule_a_fired": [1.0, 0.0], "rule_b": [0.0, 1.0], "rule_b_fired": [0.0, 1.0]}
    mixed = rule_features({"a": judged(["u2", "u1"], [2.0, 0.0]), "b": judged(["u3"], [1.0])})
    assert mixed.index.tolist() == ["u1", "u2", "u3"] and mixed.index.name == "user_id"
    assert mixed.at["u2", "rule_a"] == 2.0 and pd.isna(mixed.at["u3", "rule_a"]) and mixed.at["u3", "rule_b_fired"] == 1.0


@pytest.mark.parametrize("dtype", ["string[pyarrow]", "string[python]", "object"])
def test_row_lookup_is_the_same_for_every_string_storage_scanned_or_indexed(dtype):
    from shopsight.behavior.models.rules import _value_positions, _value_rows

    column = pd.Series(["a", None, "b", "a", "c", "a"], dtype=dtype)
    # the position of each row's value among the (distinct) values asked for; -1 else, missing too
    assert _value_positions(column, ["b", "a"]).tolist() == [1, -1, 0, 1, -1, 1]
    # the first lookup scans; a pyarrow column is indexed from its second lookup on: same answers
    for _ in range(3):
        rows = _value_rows(column, ["a", "zz", "c"])
        assert [r.tolist() for r in rows] == [[0, 3, 5], [], [4]]
        assert [r.tolist() for r in _value_rows(column, ["b"])] == [[2]]
        assert [r.tolist() for r in _value_rows(column, [])] == []


def test_user_rows_follow_edits_to_the_table():
    from shopsight.behavior.models.rules import rows_of_users

    events = pd.DataFrame({"user_id": pd.Series(["u1", "u2", "u1"], dtype="string[pyarrow]")})
    for _ in range(3):  # scanned, then indexed
        assert rows_of_users(events, ["u1"]).tolist() == [True, False, True]
    events.loc[1, "user_id"] = "u1"  # an edit puts a new (immutable) arrow array behind the column
    assert rows_of_users(events, ["u1"]).tolist() == [True, True, True]
    assert rows_of_users(events, ["u2", "u1", "u2"]).tolist() == [True, True, True]
    assert rows_of_users(events, ["nobody"]).tolist() == [False, False, False]


def test_remembered_user_count_follows_the_table_it_was_counted_on():
    from shopsight.behavior.models.rules import _n_distinct

    first = pd.Series(["u1", "u2", "u2", None], dtype="string[pyarrow]")
    assert _n_distinct(first) == 2
    assert _n_distinct(first) == 2  # remembered
    grown = pd.concat([first, pd.Series(["u3"], dtype="string[pyarrow]")], ignore_index=True)
    assert _n_distinct(grown) == 3  # a new table is counted afresh, never served the old count
    changed = first.copy()
    changed.iloc[3] = "u7"  # an edit in place swaps the immutable arrow array underneath
    assert _n_distinct(changed) == 3 and _n_distinct(first) == 2
    assert _n_distinct(pd.Series(["a", "b", "a"], dtype=object)) == 2  # other storages: plain nunique


def test_one_off_lookups_do_not_push_out_an_indexed_column():
    """score_order looks up columns of a fresh copy per call; the main table's row index must survive them."""
    from shopsight.behavior.models import rules

    main = pd.Series([f"u{i % 7}" for i in range(50)], dtype="string[pyarrow]")
    for _ in range(2):  # indexed from its second lookup
        rules._value_rows(main, ["u1"])
    kept = rules._memo(main)
    assert kept.order is not None
    copies = [pd.Series(["a", "b", "a"], dtype="string[pyarrow]") for _ in range(3 * rules._MEMO_SIZE)]
    for c in copies:  # alive, each looked up once
        rules._value_rows(c, ["a"])
    assert rules._memo(main) is kept and kept.order is not None
    assert [r.tolist() for r in rules._value_rows(main, ["u1"])] == [[1, 8, 15, 22, 29, 36, 43]]


def test_sorted_by_user_then_time_says_when_the_stable_sort_would_change_nothing():
    from shopsight.behavior.features import sorted_by_user_then_time

    ts = pd.to_datetime(["2026-01-01 10:00", "2026-01-01 10:00", "2026-01-01 11:00", "2026-01-01 09:00"], utc=True)
    frame = pd.DataFrame({"user_id": pd.array(["a", "a", "a", "b"], dtype="string"), "ts": ts})
    assert sorted_by_user_then_time(frame)  # ties keep their order; a later user may have an earlier time
    assert sorted_by_user_then_time(frame.iloc[:0]) and sorted_by_user_then_time(frame.iloc[:1])
    assert not sorted_by_user_then_time(frame.iloc[[0, 3, 1, 2]])  # users interleaved
    assert not sorted_by_user_then_time(frame.iloc[[2, 0, 1, 3]])  # one user's rows out of time order
    with_na = frame.assign(user_id=pd.array(["a", "a", None, "b"], dtype="string"))
    assert not sorted_by_user_then_time(with_na)  # the sort puts missing ids last: let it
    for rows in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]):
        part = frame.iloc[rows].reset_index(drop=True)
        want = part.sort_values(["user_id", "ts"], kind="stable")
        assert sorted_by_user_then_time(part) == want.index.equals(part.index)
