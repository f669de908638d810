"""Taobao UserBehavior (Alibaba Tianchi, 2017): page views, carts, favourites and buys, no header."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopsight.behavior.adapters._common import parse_times, validate_parsed
from shopsight.behavior.events import IngestReport, read_table

COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
EVENT_NAMES = {"pv": "view", "cart": "add_to_cart", "buy": "purchase", "fav": "favorite"}
# "Favourite" has no canonical counterpart; it is kept under this extra event name.
EXTRA_EVENTS = ("favorite",)
# The data set documents 2017-11-25 .. 2017-12-03 (China time, UTC+8); the file holds
# some stray times outside it, which are kept and counted.
WINDOW = (pd.Timestamp("2017-11-24 16:00", tz="UTC"), pd.Timestamp("2017-12-03 16:00", tz="UTC"))
OUTSIDE_NOTE = "times outside the documented 2017-11-25 .. 2017-12-03 window (kept)"


def read_taobao(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read Taobao ``UserBehavior.csv`` into canonical events.

    The file has no header; its columns are user_id, item_id, category_id, behavior_type,
    timestamp (epoch seconds). behavior_type pv / cart / buy → view / add_to_cart /
    purchase; ``fav`` (add to favourites) has no canonical event and is kept as the extra
    event ``favorite`` (feature code that counts only canonical events ignores it). The
    numeric category_id is the category. No prices, quantities (1), orders or sessions.
    Times outside the documented window are kept and counted in ``report.notes``.

    Args:
        path: ``UserBehavior.csv`` (or a slice of it).
        strict: raise on the first unusable or duplicate row instead of reporting it.
        tz: unused by this format (epoch times are UTC); accepted for a uniform signature.
        encoding: text encoding of the file.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: (strict) the first bad row, naming the file, row and column.
    """
    source = str(path)
    raw = read_table(path, encoding=encoding, header=False, names=COLUMNS)
    name = raw["behavior_type"].astype("string").str.strip().str.lower()
    table = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "ts": parse_times(raw["timestamp"], tz=tz, unit="s"),
            "event": name.map(EVENT_NAMES).fillna(name),
            "item_id": raw["item_id"],
            "category": raw["category_id"],
            "quantity": "1",
            "timestamp_text": raw["timestamp"],  # so rejected rows show the time as written
        }
    )
    events, report = validate_parsed(
        table, source=source, strict=strict, tz=tz, row_offset=1, extra_events=EXTRA_EVENTS,
        time_column="timestamp", time_values=raw["timestamp"], time_expected="epoch seconds",
    )
    favorites = int((events["event"] == "favorite").sum())
    if favorites:
        report.notes["fav read as the extra event 'favorite'"] = favorites
    outside = int(((events["ts"] < WINDOW[0]) | (events["ts"] >= WINDOW[1])).sum())
    if outside:
        report.notes[OUTSIDE_NOTE] = outside
    return events, report
