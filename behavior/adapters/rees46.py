"""REES46 eCommerce behaviour data (Kaggle, 2019–2020): one file per month of a multi-category shop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopsight.behavior.adapters._common import first_row_number, parse_times, require_columns, validate_parsed
from shopsight.behavior.events import IngestReport, read_table

EVENT_NAMES = {"view": "view", "cart": "add_to_cart", "remove_from_cart": "remove_from_cart", "purchase": "purchase"}
# "2019-10-01 00:00:00 UTC" in the files; the plain forms are accepted for re-saved copies.
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S")


def read_rees46(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read a REES46 monthly file (e.g. ``2019-Oct.csv``) into canonical events.

    Columns ``event_time`` ("2019-10-01 00:00:00 UTC"), ``event_type`` (view / cart /
    remove_from_cart / purchase → view / add_to_cart / remove_from_cart / purchase),
    ``product_id`` → item_id, ``category_code`` (dotted, e.g. "electronics.smartphone";
    often empty, then the numeric ``category_id`` is the category), ``brand`` (not kept),
    ``price``, ``user_id``, ``user_session`` → session_id. There are no order ids and no
    quantities (quantity 1). Negative prices, which some files contain, are rejected and
    counted; so are unknown event types.

    Args:
        path: one monthly CSV file.
        strict: raise on the first unusable or duplicate row instead of reporting it.
        tz: zone of times without "UTC" (only in re-saved copies).
        encoding: text encoding of the file.

    Returns:
        Canonical events and the ingest report (``notes`` counts categories taken from
        category_id).

    Raises:
        EventDataError: for a missing column, or (strict) the first bad row, naming the
            file, row and column.
    """
    source = str(path)
    raw = read_table(path, encoding=encoding)
    first_row = first_row_number(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    require_columns(
        raw, ("event_time", "event_type", "product_id", "price", "user_id"), source=source, fmt="REES46"
    )
    name = raw["event_type"].astype("string").str.strip().str.lower()
    code = raw["category_code"] if "category_code" in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="string")
    cat_id = raw["category_id"] if "category_id" in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="string")
    table = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "ts": parse_times(raw["event_time"], tz=tz, formats=_TIME_FORMATS),
            "event": name.map(EVENT_NAMES).fillna(name),
            "item_id": raw["product_id"],
            "category": code.fillna(cat_id),
            "price": raw["price"],
            "quantity": "1",
            "session_id": raw["user_session"] if "user_session" in raw.columns else pd.NA,
            "event_time_text": raw["event_time"],  # so rejected rows show the time as written
        }
    )
    events, report = validate_parsed(
        table, source=source, strict=strict, tz=tz, row_offset=first_row,
        time_column="event_time", time_values=raw["event_time"], time_expected="2019-10-01 00:00:00 UTC",
    )
    from_id = int(events["category"].str.fullmatch(r"\d+").fillna(False).sum())
    if from_id:
        report.notes["category taken from category_id (no category_code)"] = from_id
    return events, report
