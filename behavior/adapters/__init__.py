"""Readers that turn well-known public data formats into canonical events.

The list is explicit: an adapter is added here, nowhere else. Each reader returns the
canonical events and the :class:`~behavior.events.IngestReport` of what it did not keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from behavior.events import IngestReport, read_events

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
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown format '{name}'; choose one of: {', '.join(sorted(ADAPTERS))}") from None
