"""How tools write numbers, dates and field names for a reader: one set of helpers for every renderer.

Percentages with one decimal, money with thousands separators and a currency sign, dates as
"4 May 2026", counts with their noun, and no snake_case: a raw feature name becomes words.
"""

from __future__ import annotations

import functools

import re
from typing import Any

import pandas as pd

CURRENCY = "$"  # the demo shop's; a workspace without a currency is shown the same way

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def pct(p: Any, digits: int = 1) -> str:
    """0.734 → '73.4%' (None → 'unknown'); a small share keeps the digits that make it right to
    within 5% (0.003333 → '0.33%', not '0.3%'), except when ``digits`` is 0 (an "about" figure)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "unknown"
    v = float(p) * 100
    while digits and digits < 3 and v and abs(round(v, digits) - v) > 0.05 * abs(v):
        digits += 1
    return f"{v:.{digits}f}%"


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


def mentions(answer: str, sentence: str) -> bool:
    """Whether the answer carries the gist of a sentence (a reason): most of its content words, in any order."""
    words = {w for w in re.findall(r"[a-z]{4,}", sentence.lower()) if w not in {"which", "estimate", "than", "with", "that"}}
    said = set(re.findall(r"[a-z]{4,}", answer.lower()))
    return bool(words) and len(words & said) >= max(1, (2 * len(words)) // 3)


def payment_words(method: Any) -> str:
    """A payment method as stored, in words: "visa_1317" → "a Visa card ending 1317", "apple_pay" → "Apple Pay"."""
    parts = [p for p in str(method).split("_") if p]
    if len(parts) >= 2 and parts[-1].isdigit():
        return f"a {' '.join(parts[:-1]).title()} card ending {parts[-1]}"
    return " ".join(parts).title() if len(parts) > 1 else str(method)


SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")


def raw_field_names(text: str) -> list[str]:
    """The snake_case tokens in ``text`` (raw field names a reader should never see)."""
    return list(dict.fromkeys(SNAKE_CASE.findall(text)))


def quoted(text: Any) -> str:
    """Free text ready to put inside double quotes: its own double quotes become single ones."""
    return str(text or "").replace('"', "'")


@functools.cache
def country_names() -> dict[str, str]:
    """Lower-case English country names (and a few everyday ones) → ISO codes, longest first.

    From phonenumbers' region names (a dependency already, for masking): no second country table.
    """
    import phonenumbers
    from phonenumbers.geocoder import _region_display_name

    names = {_region_display_name(r, "en").lower(): r for r in phonenumbers.SUPPORTED_REGIONS}
    names |= {"usa": "US", "america": "US", "the us": "US", "uk": "GB", "britain": "GB", "great britain": "GB",
              "england": "GB", "holland": "NL", "korea": "KR"}
    return dict(sorted(((k, v) for k, v in names.items() if k), key=lambda kv: -len(kv[0])))
