"""Validation into the canonical event schema: what is kept, what is reported, what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.events import (
    EventDataError,
    REQUIRED_COLUMNS,
    parse_mapping,
    read_events,
    validate_events,
)

HEADER = "user_id,ts,event,item_id,category,price,quantity,session_id"


def _csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _reasons(report) -> dict[str, tuple[str | None, int, list[int]]]:
    return {r.reason.split(" (")[0]: (r.column, r.count, r.first_rows) for r in report.rejected_reasons}


GOOD = [
    "u1,2024-03-01T10:00:00Z,view,i1,shoes,59.90,1,s1",
    "u1,2024-03-01T10:05:00Z,add_to_cart,i1,shoes,59.90,1,s1",
    "u2,2024-03-02T09:00:00Z,purchase,i2,bags,120,2,s2",
]


def test_valid_file_becomes_canonical_sorted_events(tmp_path):
    events, report = read_events(_csv(tmp_path, *GOOD))
    assert list(events.columns) == list(REQUIRED_COLUMNS)
    assert (report.rows_read, report.rows_kept, report.rows_rejected, report.duplicates) == (3, 3, 0, 0)
    assert str(events["ts"].dtype) == "datetime64[ns, UTC]"
    assert events["price"].tolist() == [59.9, 59.9, 120.0]
    assert events["quantity"].tolist() == [1, 1, 2]
    assert events["quantity"].dtype == np.int64
    assert events["user_id"].tolist() == ["u1", "u1", "u2"]
    assert report.naive_timestamps_as is None


def test_missing_required_column_is_named_with_a_hint(tmp_path):
    path = _csv(tmp_path, "u1,view,i1", header="user_id,event,item_id")
    with pytest.raises(EventDataError) as err:
        read_events(path)
    assert err.value.column == "ts"
    assert str(path) in str(err.value) and "--map ts=" in str(err.value)


def test_unparsable_timestamp_is_rejected_with_its_row(tmp_path):
    events, report = read_events(_csv(tmp_path, GOOD[0], "u1,last tuesday,view,i1,shoes,1,1,s1", GOOD[2]))
    assert report.rows_kept == 2
    assert _reasons(report) == {"unparsable timestamp": ("ts", 1, [3])}
    assert report.rejected["reason"].tolist() == ["unparsable timestamp"]
    assert report.rejected["ts"].tolist() == ["last tuesday"]  # the raw text is kept


def test_negative_price_is_rejected(tmp_path):
    _, report = read_events(_csv(tmp_path, *GOOD, "u3,2024-03-03T09:00:00Z,purchase,i3,bags,-5,1,s3"))
    assert _reasons(report) == {"negative price": ("price", 1, [5])}
    assert report.rows_kept == 3


def test_unknown_event_is_rejected_and_extra_events_allow_it(tmp_path):
    path = _csv(tmp_path, *GOOD, "u3,2024-03-03T09:00:00Z,wishlist,i3,bags,5,1,s3")
    _, report = read_events(path)
    column, count, rows = _reasons(report)["unknown event"]
    assert (column, count, rows) == ("event", 1, [5])
    events, report = validate_events(pd.read_csv(path, dtype=str), source="x", extra_events=["wishlist"])
    assert report.rows_kept == 4 and "wishlist" in set(events["event"])


def test_event_names_are_trimmed_and_lower_cased(tmp_path):
    events, report = read_events(_csv(tmp_path, "u1,2024-03-01T10:00:00Z, View ,i1,shoes,1,1,s1"))
    assert events["event"].tolist() == ["view"] and report.rows_rejected == 0


def test_text_in_a_number_column_is_rejected_by_row(tmp_path):
    path = _csv(tmp_path, GOOD[0], "u1,2024-03-01T10:05:00Z,view,i2,shoes,abc,1,s1", "u1,2024-03-01T10:06:00Z,view,i3,shoes,1,two,s1")
    events, report = read_events(path)
    reasons = _reasons(report)
    assert reasons["price is not a number"] == ("price", 1, [3])
    assert reasons["quantity is not a number"] == ("quantity", 1, [4])
    assert events["price"].dtype == np.float64 and report.rows_kept == 1


def test_fractional_and_negative_quantities_are_rejected(tmp_path):
    path = _csv(tmp_path, GOOD[0], "u1,2024-03-01T10:05:00Z,view,i2,shoes,1,1.5,s1", "u1,2024-03-01T10:06:00Z,view,i3,shoes,1,-2,s1")
    _, report = read_events(path)
    reasons = _reasons(report)
    assert reasons["quantity is not a whole number"] == ("quantity", 1, [3])
    assert reasons["negative quantity"] == ("quantity", 1, [4])


def test_missing_optional_values_are_filled(tmp_path):
    path = _csv(tmp_path, "u1,2024-03-01T10:00:00Z,view", header="user_id,ts,event")
    events, _ = read_events(path)
    row = events.iloc[0]
    assert row["quantity"] == 1 and np.isnan(row["price"])
    assert pd.isna(row["item_id"]) and pd.isna(row["session_id"])


def test_missing_user_id_is_rejected(tmp_path):
    _, report = read_events(_csv(tmp_path, GOOD[0], ",2024-03-01T10:05:00Z,view,i2,shoes,1,1,s1"))
    assert _reasons(report) == {"missing user id": ("user_id", 1, [3])}


def test_rows_read_equal_kept_plus_duplicates_plus_rejected(tmp_path):
    path = _csv(tmp_path, *GOOD, GOOD[0], "u9,nope,view,i,c,1,1,s", "u9,2024-03-01T10:00:00Z,jump,i,c,1,1,s")
    _, report = read_events(path)
    assert report.rows_read == 6
    assert (report.rows_kept, report.duplicates, report.rows_rejected) == (3, 1, 2)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(EventDataError, match="empty") as err:
        read_events(path)
    assert err.value.source == str(path)


def test_header_only_file_is_refused(tmp_path):
    with pytest.raises(EventDataError, match="header but no rows"):
        read_events(_csv(tmp_path))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(EventDataError, match="file not found"):
        read_events(tmp_path / "nope.csv")


def test_latin1_bytes_in_utf8_read_name_the_line(tmp_path):
    path = tmp_path / "events.csv"
    text = "\n".join([HEADER, *GOOD[:2], "u2,2024-03-02T09:00:00Z,purchase,i2,café,120,2,s2"]) + "\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(EventDataError) as err:
        read_events(path)
    assert "line 4" in str(err.value) and "latin-1" in str(err.value)
    events, _ = read_events(path, encoding="latin-1")
    assert "café" in set(events["category"])


def test_duplicates_are_counted_and_dropped(tmp_path):
    events, report = read_events(_csv(tmp_path, *GOOD, GOOD[1]))
    assert report.duplicates == 1 and report.rows_kept == 3 and len(events) == 3


def test_strict_refuses_a_duplicate_naming_its_row(tmp_path):
    with pytest.raises(EventDataError) as err:
        read_events(_csv(tmp_path, *GOOD, GOOD[1]), strict=True)
    assert err.value.row == 5 and "duplicate" in str(err.value)


def test_strict_names_row_column_and_value(tmp_path):
    path = _csv(tmp_path, GOOD[0], "u1,2024-03-01T10:05:00Z,view,i2,shoes,abc,1,s1")
    with pytest.raises(EventDataError) as err:
        read_events(path, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(path), 3, "price")
    assert "'abc'" in str(err.value) and "row 3" in str(err.value)


def test_strict_reports_the_earliest_bad_row_whatever_the_check(tmp_path):
    # row 3 has a bad price, row 4 an unknown event; the event check runs first
    path = _csv(tmp_path, GOOD[0], "u1,2024-03-01T10:05:00Z,view,i2,shoes,abc,1,s1", "u1,2024-03-01T10:06:00Z,jump,i3,shoes,1,1,s1")
    with pytest.raises(EventDataError) as err:
        read_events(path, strict=True)
    assert (err.value.row, err.value.column) == (3, "price")


def test_all_rows_bad_is_an_error_with_an_example(tmp_path):
    with pytest.raises(EventDataError, match="no usable rows") as err:
        read_events(_csv(tmp_path, "u1,nope,view,i,c,1,1,s", "u2,never,view,i,c,1,1,s"))
    assert "row 2" in str(err.value)


def test_column_mapping_with_parse_mapping(tmp_path):
    path = _csv(
        tmp_path, "17850,2010-12-01 08:26:00,purchase,85123A,2.55,6",
        header="CustomerID,InvoiceDate,event,StockCode,UnitPrice,Quantity",
    )
    mapping = parse_mapping(["user_id=CustomerID", "ts=InvoiceDate", "item_id=StockCode", "price=UnitPrice", "quantity=Quantity"])
    assert mapping["CustomerID"] == "user_id"
    events, _ = read_events(path, mapping=mapping)
    assert events.iloc[0][["user_id", "item_id", "price", "quantity"]].tolist() == ["17850", "85123A", 2.55, 6]


@pytest.mark.parametrize(
    ("pair", "message"),
    [("user_id", "expected CANONICAL=SOURCE"), ("customer=CustomerID", "not a canonical column"), ("user_id=", "empty")],
)
def test_parse_mapping_refuses_bad_pairs(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_mapping([pair])


def test_mapping_two_columns_to_one_is_refused(tmp_path):
    path = _csv(tmp_path, "u1,u2,2024-03-01T10:00:00Z,view", header="a,b,ts,event")
    with pytest.raises(EventDataError, match="appears twice"):
        read_events(path, mapping={"a": "user_id", "b": "user_id"})


def test_naive_timestamps_are_read_in_the_given_zone(tmp_path):
    path = _csv(tmp_path, "u1,2024-07-01 12:00:00,view", "u1,2024-01-15 12:00:00,view", header="user_id,ts,event")
    events, report = read_events(path, tz="Europe/Berlin")
    assert report.naive_timestamps_as == "Europe/Berlin"
    assert sorted(events["ts"].tolist()) == [
        pd.Timestamp("2024-01-15 11:00", tz="UTC"),  # CET = UTC+1
        pd.Timestamp("2024-07-01 10:00", tz="UTC"),  # CEST = UTC+2
    ]


def test_zoned_and_naive_stamps_mix_row_by_row(tmp_path):
    path = _csv(
        tmp_path, "u1,2024-03-01T10:00:00+02:00,view", "u1,2024-03-01 10:00:00,view", "u1,2024-03-01 10:00:00 UTC,view",
        header="user_id,ts,event",
    )
    events, _ = read_events(path, tz="America/New_York")
    assert sorted(events["ts"].tolist()) == [
        pd.Timestamp("2024-03-01 08:00", tz="UTC"),
        pd.Timestamp("2024-03-01 10:00", tz="UTC"),
        pd.Timestamp("2024-03-01 15:00", tz="UTC"),
    ]


def test_epoch_seconds_and_milliseconds(tmp_path):
    seconds = _csv(tmp_path, "u1,1709287200,view", "u1,1709287260,view", header="user_id,ts,event", name="s.csv")
    millis = _csv(tmp_path, "u1,1709287200000,view", "u1,1709287260500,view", header="user_id,ts,event", name="ms.csv")
    s_events, _ = read_events(seconds)
    ms_events, _ = read_events(millis)
    assert s_events["ts"].tolist() == [pd.Timestamp("2024-03-01 10:00", tz="UTC"), pd.Timestamp("2024-03-01 10:01", tz="UTC")]
    assert ms_events["ts"].tolist() == [pd.Timestamp("2024-03-01 10:00", tz="UTC"), pd.Timestamp("2024-03-01 10:01:00.5", tz="UTC")]


def test_parquet_float_ids_become_whole_numbers(tmp_path):
    raw = pd.DataFrame({"user_id": [12.0, 13.0], "ts": pd.to_datetime(["2024-03-01", "2024-03-02"], utc=True), "event": ["view", "view"]})
    path = tmp_path / "events.parquet"
    raw.to_parquet(path)
    events, _ = read_events(path)
    assert events["user_id"].tolist() == ["12", "13"]


def test_round_trip_through_the_workspace_keeps_dtypes_and_values(tmp_path, workspace):
    path = _csv(
        tmp_path, *GOOD, "u3,2024-03-03T09:00:00.123456Z,refund,i3,,0.1,3,",
        header=HEADER,
    )
    events, _ = read_events(path)
    events["country"] = pd.array(["DE", "DE", pd.NA, "FR"], dtype="string")
    workspace.save_events(events)
    loaded = workspace.load_events()
    pd.testing.assert_frame_equal(loaded, events, check_exact=True)
    assert loaded["ts"].iloc[-1] == pd.Timestamp("2024-03-03 09:00:00.123456", tz="UTC")


def test_loaded_events_have_one_chunk_per_string_column_and_the_same_values(tmp_path):
    """Parquet reads arrive in batches; load_events joins them so one user's rows cost what they hold."""
    from shopsight.behavior.events import single_chunk_strings
    from shopsight.behavior.workspace import Workspace

    n = 300_000  # more rows than one parquet read batch
    events = pd.DataFrame({
        "user_id": pd.Series([f"u{i % 997:04d}" for i in range(n)], dtype="string[pyarrow]"),
        "ts": pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC"),
        "event": pd.Series(["view", None, "purchase"] * (n // 3), dtype="string[pyarrow]"),
        "price": np.arange(n, dtype="float64"),
    })
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    ws.save_events(events)
    raw = pd.read_parquet(ws.events_path)
    assert raw["user_id"].array.__arrow_array__().num_chunks > 1  # what a plain read gives
    loaded = ws.load_events()
    for col in ("user_id", "event"):
        assert loaded[col].array.__arrow_array__().num_chunks == 1
    pd.testing.assert_frame_equal(loaded, raw)  # same values, dtypes and index
    assert single_chunk_strings(pd.DataFrame({"x": pd.Series(["a"], dtype=object)}))["x"].tolist() == ["a"]  # other storages untouched
