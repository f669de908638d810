"""RetailRocket ``events.csv`` (Kaggle, 2015): views, add-to-carts and transactions of a real shop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopsight.behavior.adapters._common import first_row_number, parse_times, require_columns, validate_parsed
from shopsight.behavior.events import IngestReport, read_table

EVENT_NAMES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}


def read_retailrocket(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read RetailRocket ``events.csv`` into canonical events.

    Columns ``timestamp`` (epoch milliseconds, UTC), ``visitorid``, ``event``, ``itemid``,
    ``transactionid``: visitorid → user_id, itemid → item_id, transactionid → order_id
    (set on transactions only); events view / addtocart / transaction → view /
    add_to_cart / purchase. Any other event name is rejected as "unknown event" with its
    row. The file has no prices, quantities or categories (they are in the separate
    ``item_properties`` files): price is empty and quantity 1. Exact duplicate lines are
    counted and dropped.

    Args:
        path: the ``events.csv`` file.
        strict: raise on the first unusable or duplicate row instead of reporting it.
        tz: unused by this format (epoch times are UTC); accepted for a uniform signature.
        encoding: text encoding of the file.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: for a missing column, or (strict) the first bad row, naming the
            file, row and column.
    """
    source = str(path)
    raw = read_table(path, encoding=encoding)
    first_row = first_row_number(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    require_columns(raw, ("timestamp", "visitorid", "event", "itemid"), source=source, fmt="RetailRocket events.csv")
    name = raw["event"].astype("string").str.strip().str.lower()
    table = pd.DataFrame(
        {
            "user_id": raw["visitorid"],
            "ts": parse_times(raw["timestamp"], tz=tz, unit="ms"),
            # Unknown names stay as written so that validation reports them by row.
            "event": name.map(EVENT_NAMES).fillna(name),
            "item_id": raw["itemid"],
            "quantity": "1",
            "order_id": raw["transactionid"] if "transactionid" in raw.columns else pd.NA,
            "timestamp_text": raw["timestamp"],  # so rejected rows show the time as written
        }
    )
    return validate_parsed(
        table, source=source, strict=strict, tz=tz, row_offset=first_row,
        time_column="timestamp", time_values=raw["timestamp"], time_expected="epoch milliseconds",
    )
