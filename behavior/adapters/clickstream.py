"""Retentioneering-style clickstreams: ``user_id, event, timestamp`` with the shop's own event names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from shopsight.behavior.adapters._common import first_row_number, require_columns
from shopsight.behavior.events import EVENT_TYPES, IngestReport, read_table, validate_events

# Page and step names of retentioneering's data sets (simple_shop, ecom) and common shop
# trackers, by the canonical event they mean, following each data set's documentation:
# in both, "cart" is visiting the cart page after an item was added, so it is a view; in
# simple_shop, "product1"/"product2" are documented as adding that item to the cart.
KNOWN_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ["main", "home", "catalog", "catalogue", "category", "product", "product_view", "item", "page_view",
         "filter_results", "promo_page", "compare", "review_page", "account_page", "cart"],
        "view",
    ),
    "search": "search",
    **dict.fromkeys(["add_to_cart", "addtocart", "add_cart", "cart_add"], "add_to_cart"),
    "remove_from_cart": "remove_from_cart",
    **dict.fromkeys(["checkout", "shipping_details", "payment_details"], "checkout"),
    **dict.fromkeys(["purchase", "payment_done", "order", "order_done"], "purchase"),
    "refund": "refund",
    **dict.fromkeys(["login", "sign_in"], "login"),
    "review": "review",
}
# Checked in order for names not in KNOWN_NAMES.
NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"product\d+", "add_to_cart"),  # simple_shop: product1, product2
    (r"(?:delivery|shipping|payment)_\w+", "checkout"),  # delivery_choice, payment_card, ...
)


def canonical_event_names(names: pd.Series) -> pd.Series:
    """The canonical event for each raw name, or NA where no known name or pattern matches."""
    lowered = names.astype("string").str.strip().str.lower()
    out = lowered.map(KNOWN_NAMES).astype("string")
    canonical = lowered.isin(EVENT_TYPES).fillna(False)
    out[canonical] = lowered[canonical]
    for pattern, event in NAME_PATTERNS:
        hit = out.isna() & lowered.str.fullmatch(pattern).fillna(False)
        out[hit] = event
    return out


def read_clickstream(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
    unknown_events: Literal["view", "keep"] = "view",
    user_col: str = "user_id",
    event_col: str = "event",
    time_col: str = "timestamp",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read a clickstream (retentioneering's ``user_id, event, timestamp`` layout) into events.

    Event names are the shop's own: known page and step names are mapped as the
    retentioneering data sets document them (:data:`KNOWN_NAMES`, :data:`NAME_PATTERNS`):
    ``main``, ``catalog``, ``product_view`` and the ``cart`` page → view; ``add_to_cart``
    and simple_shop's ``product1``/``product2`` → add_to_cart; ``delivery_*``,
    ``shipping_*``, ``payment_*`` steps → checkout; ``payment_done`` → purchase;
    canonical names stay as they are. A name that matches nothing is
    still a screen the user saw, so by default it is read as ``view``
    (``unknown_events="view"``) and counted per name in ``report.notes``; with
    ``unknown_events="keep"`` it is kept under its own lower-cased name as an extra event.
    Columns ``session_id``, ``item_id``, ``category``, ``price``, ``quantity``,
    ``order_id``, ``device`` (or retentioneering's ``platform``), ``country`` are used
    when present; other columns are ignored. Timestamps may be text
    with or without a zone (naive ones are read in ``tz``) or epoch seconds/milliseconds.

    Args:
        path: the CSV file.
        strict: raise on the first unusable or duplicate row instead of reporting it.
        tz: zone of timestamps that carry none.
        encoding: text encoding of the file.
        unknown_events: ``"view"`` or ``"keep"``, see above.
        user_col: the file's user column.
        event_col: the file's event-name column.
        time_col: the file's time column.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: for a missing column, or (strict) the first bad row, naming the
            file, row and column.
        ValueError: for an ``unknown_events`` other than "view" or "keep".
    """
    if unknown_events not in ("view", "keep"):
        raise ValueError(f"unknown_events must be 'view' or 'keep', not {unknown_events!r}")
    source = str(path)
    raw = read_table(path, encoding=encoding)
    first_row = first_row_number(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    require_columns(raw, (user_col, event_col, time_col), source=source, fmt="clickstream")
    names = raw[event_col].astype("string").str.strip().str.lower()
    mapped = canonical_event_names(names)
    unknown = mapped.isna() & names.notna()
    table = raw.drop(columns=[user_col, event_col, time_col]).copy()
    if "platform" in table.columns and "device" not in table.columns:
        table = table.rename(columns={"platform": "device"})
    table["user_id"] = raw[user_col]
    table["ts"] = raw[time_col]
    table["event"] = mapped.mask(unknown, "view" if unknown_events == "view" else names)
    table["source_event"] = raw[event_col]  # so rejected rows show the name as written
    extra = sorted(set(names[unknown].dropna())) if unknown_events == "keep" else []
    events, report = validate_events(table, source=source, strict=strict, tz=tz, extra_events=extra, row_offset=first_row)
    if unknown.any():
        # Count on the raw rows; rows later rejected for another reason are still counted
        # among those rejections, so these counts describe the file's names.
        how = "read as view" if unknown_events == "view" else "kept as extra events"
        for name, count in names[unknown].value_counts().sort_index().items():
            report.notes[f"unknown event '{name}' {how}"] = int(count)
    return events, report
