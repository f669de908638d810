"""Online Retail II (UCI): invoice lines of a UK gift wholesaler, 2009–2011, as canonical events.

Also reads the original Online Retail file (2010–2011), whose columns are ``InvoiceNo``,
``UnitPrice`` and ``CustomerID`` instead of ``Invoice``, ``Price`` and ``Customer ID``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopsight.behavior.adapters._common import first_row_number, drop_float_suffix, parse_times, require_columns, validate_parsed
from shopsight.behavior.events import IngestReport, read_table

# Original Online Retail column names → the Online Retail II names used below.
_ORIGINAL_NAMES = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
# The UCI spreadsheet exported to CSV gives ISO times; the original file's CSV copies
# (e.g. on Kaggle) give US month/day times.
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
CANCELLED_NOTE = "cancelled invoices (C...) read as refund"
# Stock codes that are not goods: postage, manual lines, discounts, carriage, charity,
# bank and Amazon fees, adjustments, samples, bad debt, tests.
NON_PRODUCT_CODES = r"POST|DOT|M|D|C2|CRUK|BANK CHARGES|AMAZONFEE|ADJUST\d*|PADS|S|B|TEST\d+"
NON_PRODUCT_NOTE = "non-product lines (postage, fees, discounts, adjustments) kept as events"


def read_online_retail(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "Europe/London",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read an Online Retail II (or original Online Retail) CSV into canonical events.

    Each invoice line becomes one event: ``order_id`` = Invoice, ``item_id`` = StockCode,
    ``price`` = Price, ``quantity`` = Quantity, ``country`` = Country, event ``purchase``.
    An Invoice starting with "C" is a cancellation: event ``refund`` with the quantity made
    positive (the file writes it negative) and the price as given; their count is in
    ``report.notes``. Lines without a Customer ID cannot be attributed to anyone and are
    rejected as "missing user id" — counted and kept in ``report.rejected``, as are the
    other unusable lines (bad-debt adjustments "A..." with negative prices, stock
    corrections with negative quantities). Exact duplicate lines, which the data set
    contains, are counted in ``report.duplicates`` and dropped. Customer ids written as
    floats ("13085.0") become "13085". Lines whose StockCode is not a good (POST, M, D,
    BANK CHARGES, AMAZONFEE, ...) are kept and counted in ``report.notes``. There is no
    category; sessions come later.

    Args:
        path: the CSV file (``online_retail_II.csv`` or ``OnlineRetail.csv``; the UCI
            spreadsheet saved as CSV), or a Parquet copy with the same columns.
        strict: raise on the first unusable or duplicate line instead of reporting it.
        tz: zone of InvoiceDate, which carries none; the shop is in the UK.
        encoding: text encoding; copies of the original file are often ``latin-1``.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: for a missing column, or (strict) the first bad line, naming the
            file, row and column.
    """
    source = str(path)
    raw = read_table(path, encoding=encoding)
    first_row = first_row_number(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    raw = raw.rename(columns={k: v for k, v in _ORIGINAL_NAMES.items() if k in raw.columns})
    require_columns(raw, ("Invoice", "StockCode", "Quantity", "InvoiceDate", "Price", "Customer ID"), source=source, fmt="Online Retail II")

    invoice = raw["Invoice"].astype("string").str.strip()
    cancelled = invoice.str.upper().str.startswith("C").fillna(False)
    quantity_text = raw["Quantity"].astype("string").str.strip()  # text from CSV, numbers from Parquet
    quantity = pd.to_numeric(quantity_text, errors="coerce")
    table = pd.DataFrame(
        {
            "user_id": drop_float_suffix(raw["Customer ID"]),
            "ts": parse_times(raw["InvoiceDate"], tz=tz, formats=_TIME_FORMATS),
            "event": cancelled.map({True: "refund", False: "purchase"}),
            "item_id": raw["StockCode"],
            "price": raw["Price"],
            # A cancellation line holds the returned quantity as a negative number; other
            # text is left as it is so that validation reports it with its row.
            "quantity": quantity_text.where(~(cancelled & (quantity < 0)), (-quantity).astype("string")),
            "order_id": invoice,
        }
    )
    if "Country" in raw.columns:
        table["country"] = raw["Country"]
    table["ts_text"] = raw["InvoiceDate"]  # so rejected rows show the time as written
    events, report = validate_parsed(
        table, source=source, strict=strict, tz=tz, row_offset=first_row,
        time_column="InvoiceDate", time_values=raw["InvoiceDate"], time_expected="2009-12-01 07:45:00",
    )
    report.naive_timestamps_as = tz
    n_refunds = int((events["event"] == "refund").sum())
    if n_refunds:
        report.notes[CANCELLED_NOTE] = n_refunds
    # Kept because they are money the customer paid or got back, but revenue per product
    # should leave them out: their count tells how much of the file they are.
    n_other = int(events["item_id"].str.upper().str.fullmatch(NON_PRODUCT_CODES).fillna(False).sum())
    if n_other:
        report.notes[NON_PRODUCT_NOTE] = n_other
    return events, report


def online_retail_catalogue(path: str | Path, *, encoding: str = "utf-8") -> pd.DataFrame:
    """The items of an Online Retail file: StockCode, its description and usual price.

    Args:
        path: the same file :func:`read_online_retail` reads.
        encoding: text encoding of the file.

    Returns:
        One row per StockCode: ``item_id``, ``name`` (its most frequent Description; the
        others are mostly stock notes such as "damaged" or "?"), ``category`` (NA: the data
        set has none) and ``price`` (median positive Price, NaN if none).

    Raises:
        EventDataError: for a missing column.
    """
    raw = read_table(path, encoding=encoding)
    raw.columns = [str(c).strip() for c in raw.columns]
    raw = raw.rename(columns={k: v for k, v in _ORIGINAL_NAMES.items() if k in raw.columns})
    require_columns(raw, ("StockCode", "Description", "Price"), source=str(path), fmt="Online Retail II")
    lines = pd.DataFrame(
        {
            "item_id": raw["StockCode"].astype("string").str.strip(),
            "name": raw["Description"].astype("string").str.strip(),
            "price": pd.to_numeric(raw["Price"].astype("string").str.strip(), errors="coerce"),
        }
    )
    named = lines.dropna(subset=["item_id", "name"])
    names = (
        named.groupby(["item_id", "name"]).size().rename("n").reset_index()
        .sort_values(["item_id", "n", "name"], ascending=[True, False, True], kind="stable")
        .drop_duplicates("item_id")
        .set_index("item_id")["name"]
    )
    items = pd.Index(lines["item_id"].dropna().unique(), name="item_id").sort_values()
    prices = lines[lines["price"] > 0].groupby("item_id")["price"].median()
    return pd.DataFrame(
        {
            "item_id": pd.array(items, dtype="string"),
            "name": pd.array(names.reindex(items), dtype="string"),
            "category": pd.array([pd.NA] * len(items), dtype="string"),
            "price": prices.reindex(items).astype("float64").to_numpy(),
        }
    )
