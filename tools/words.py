"""How tools write numbers, dates and field names for a reader: one set of helpers for every renderer.

Percentages with one decimal, money with thousands separators and a currency sign, dates as
"4 May 2026", counts with their noun, and no snake_case: a raw feature name becomes words.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

CURRENCY = "$"  # the demo shop's; a workspace without a currency is shown the same way

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def pct(p: Any, digits: int = 1) -> str:
    """0.734 → '73.4%' (None → 'unknown')."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "unknown"
    return f"{float(p) * 100:.{digits}f}%"


def money(x: Any) -> str:
    """1234.5 → '$1,234.50'; whole amounts keep their cents so the value reads exactly."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "unknown"
    return f"{'-' if x < 0 else ''}{CURRENCY}{abs(float(x)):,.2f}"


def count(n: Any, noun: str, plural: str | None = None) -> str:
    """3, 'session' → '3 sessions'; 1 → '1 session'."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return f"an unknown number of {plural or noun + 's'}"
    value = int(n) if float(n).is_integer() else n
    return f"{value:,} {noun if value == 1 else (plural or noun + 's')}"


def human_date(value: Any) -> str:
    """'2026-05-04' (or a timestamp) → '4 May 2026'; unreadable values are returned as given."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "an unknown day"
    try:
        ts = pd.Timestamp(str(value)[:10])
    except (ValueError, TypeError):
        return str(value)
    return f"{ts.day} {_MONTHS[ts.month - 1]} {ts.year}"


def number(x: Any, digits: int = 1) -> str:
    """A quantity for reading: integers with separators, others with at most ``digits`` decimals."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return str(x)
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".")


_WINDOW = re.compile(r"^(?P<what>.+?)_(?P<n>\d+)d$")
_VS = re.compile(r"^(?P<a>.+?)_vs_(?P<b>.+)$")
_WORDS = {
    "n": "number of", "avg": "average", "aov": "average order value", "pct": "share", "ts": "time",
    "buys": "purchases", "carts": "cart adds", "prev60": "the 60 days before", "days": "days",
}


def words_for(name: str) -> str:
    """A raw field name in words when no glossary phrase exists: 'views_30d' → 'views in the last 30 days'."""
    name = str(name)
    if m := _WINDOW.match(name):
        return f"{words_for(m.group('what'))} in the last {m.group('n')} days"
    if m := _VS.match(name):
        return f"{words_for(m.group('a'))} compared with {words_for(m.group('b'))}"
    parts = [_WORDS.get(p, p) for p in name.split("_") if p]
    return " ".join(parts)


SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")


def raw_field_names(text: str) -> list[str]:
    """The snake_case tokens in ``text`` (raw field names a reader should never see)."""
    return list(dict.fromkeys(SNAKE_CASE.findall(text)))


def quoted(text: Any) -> str:
    """Free text ready to put inside double quotes: its own double quotes become single ones."""
    return str(text or "").replace('"', "'")
