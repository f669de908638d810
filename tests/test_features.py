"""Sessionization edge cases: gap boundary, midnight, DST, ties, source ids, stable ids."""

from __future__ import annotations

import pandas as pd

from shopsight.behavior.events import validate_events
from shopsight.behavior.features import SESSION_GAP, sessionize


def _events(rows: list[tuple], tz: str = "UTC") -> pd.DataFrame:
    """Canonical events from (user_id, ts, event[, item_id[, session_id]]) tuples, as an adapter makes them."""
    cols = ["user_id", "ts", "event", "item_id", "session_id"]
    raw = pd.DataFrame([list(r) + [None] * (5 - len(r)) for r in rows], columns=cols).astype("string")
    events, report = validate_events(raw, source="test", tz=tz)
    assert report.rows_rejected == 0 and report.duplicates == 0
    return events


def _sessions(events: pd.DataFrame) -> list[str]:
    return sessionize(events)["session_id"].tolist()


def test_sessionize_works_on_fresh_canonical_events_without_ids():
    # canonical string ids once broke the first-row comparison (NA → int)
    events = _events([("u1", "2024-03-01 10:00", "view"), ("u2", "2024-03-01 10:00", "view")])
    assert sorted(_sessions(events)) == ["u1-s1", "u2-s1"]


def test_a_gap_of_exactly_30_minutes_stays_in_the_session():
    assert SESSION_GAP == pd.Timedelta(minutes=30)
    events = _events([("u1", "2024-03-01 10:00:00", "view"), ("u1", "2024-03-01 10:30:00", "view")])
    assert _sessions(events) == ["u1-s1", "u1-s1"]


def test_a_gap_just_over_30_minutes_starts_a_new_session():
    events = _events([("u1", "2024-03-01 10:00:00", "view"), ("u1", "2024-03-01 10:30:01", "view")])
    assert _sessions(events) == ["u1-s1", "u1-s2"]


def test_a_session_crossing_midnight_stays_one_session():
    events = _events(
        [("u1", "2024-03-01 23:50", "view"), ("u1", "2024-03-02 00:05", "add_to_cart"), ("u1", "2024-03-02 00:20", "purchase")]
    )
    assert _sessions(events) == ["u1-s1"] * 3


def test_clocks_going_forward_in_london_do_not_split_a_session():
    # 2024-03-31 01:00 GMT the UK clocks jump to 02:00 BST: 00:45 → 02:10 local is 25 real minutes
    events = _events([("u1", "2024-03-31 00:45", "view"), ("u1", "2024-03-31 02:10", "view")], tz="Europe/London")
    assert events["ts"].tolist() == [pd.Timestamp("2024-03-31 00:45", tz="UTC"), pd.Timestamp("2024-03-31 01:10", tz="UTC")]
    assert _sessions(events) == ["u1-s1", "u1-s1"]


def test_identical_timestamps_keep_their_input_order():
    events = _events(
        [
            ("u1", "2024-03-01 10:00", "view", "i1"),
            ("u1", "2024-03-01 10:00", "add_to_cart", "i1"),
            ("u1", "2024-03-01 10:00", "checkout", "i1"),
            ("u1", "2024-03-01 10:00", "purchase", "i1"),
        ]
    )
    out = sessionize(events)
    assert out["event"].tolist() == ["view", "add_to_cart", "checkout", "purchase"]
    assert set(out["session_id"]) == {"u1-s1"}


def test_session_ids_from_the_source_are_kept():
    events = _events(
        [
            ("u1", "2024-03-01 10:00", "view", "i1", "abc"),
            ("u1", "2024-03-01 15:00", "view", "i2", "abc"),  # hours apart, same source session
            ("u1", "2024-03-02 09:00", "view", "i3"),
            ("u1", "2024-03-02 09:10", "view", "i4"),
            ("u1", "2024-03-02 12:00", "view", "i5"),
        ]
    )
    out = sessionize(events)
    assert out["session_id"].tolist() == ["abc", "abc", "u1-s1", "u1-s1", "u1-s2"]


def test_session_ids_count_per_user_in_time_order_and_are_stable():
    rows = [
        ("u2", "2024-03-01 08:00", "view"),
        ("u1", "2024-03-01 09:00", "view"),
        ("u1", "2024-03-01 12:00", "view"),
        ("u2", "2024-03-01 08:10", "view"),
        ("u1", "2024-03-01 09:20", "purchase"),
        ("u2", "2024-03-03 08:00", "view"),
    ]
    first = sessionize(_events(rows))
    shuffled = sessionize(_events(rows[::-1]))
    again = sessionize(first.assign(session_id=pd.array([pd.NA] * len(first), dtype="string")))
    key = ["user_id", "ts"]
    expected = {
        ("u1", "09:00"): "u1-s1", ("u1", "09:20"): "u1-s1", ("u1", "12:00"): "u1-s2",
        ("u2", "08:00"): "u2-s1", ("u2", "08:10"): "u2-s1",
    }
    got = {(u, t.strftime("%H:%M")): s for u, t, s in first[["user_id", "ts", "session_id"]].itertuples(index=False) if t.day == 1}
    assert got == expected
    assert first.loc[first["ts"].dt.day == 3, "session_id"].item() == "u2-s2"
    pd.testing.assert_frame_equal(first.sort_values(key).reset_index(drop=True), shuffled.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(first, again)
