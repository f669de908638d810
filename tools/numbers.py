"""How numbers are read out of an answer and matched to a tool's values: the one definition.

The grounding guard (is every number in the answer from a tool?), the key-fact checks (does
the answer state the probability?) and the eval checks all use these functions. Rounding to
the shown precision, percent (0.734 ↔ 73% / 73.4%), currency signs and thousands separators
are allowed. Ids (u00042, o000123, u00042-s0007), dates, clock times, model versions
(churn@v3) and years are not numbers for this purpose.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Things that contain digits but are not quantities; removed before numbers are read.
_NOT_NUMBERS = re.compile(
    r"""
    \b\d{4}-\d{2}-\d{2}(?:[T\s]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?   # dates, datetimes
    | \b\d{1,2}:\d{2}(?::\d{2})?\b                                  # clock times
    | \b[A-Za-z_]+[A-Za-z_.]*@v?[\w.]+                               # model@version
    | \b[A-Za-z]+[-_]?\d+(?:[-_][A-Za-z]*\d+)*\b                   # ids: u00042, o000123, u00042-s0007, CUST-0042, v3
    | \b(?:19|20)\d{2}\b(?![.,]\d)                                   # years
    """,
    re.VERBOSE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?[$€£]?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s?(%|percent\b)?")
# A rounding must keep the value within 5% to state it: "1" does not state 0.734 (nor 0.949).
MAX_RELATIVE_ERROR = 0.05


@dataclass(frozen=True)
class ShownNumber:
    """A number as an answer shows it: its text, value, decimals shown, and whether it is a percent."""

    text: str
    value: float
    decimals: int
    percent: bool
    start: int = 0  # where it starts in the text it was read from (after ids and dates were blanked)


def numbers_in(text: str) -> list[ShownNumber]:
    """The quantities written in ``text`` (ids, dates, versions and years left out)."""
    cleaned = _NOT_NUMBERS.sub(lambda m: " " * len(m.group(0)), text)  # same length: positions stay true
    found = []
    for m in _NUMBER.finditer(cleaned):
        whole, frac, pct = m.group(1), m.group(2) or "", m.group(3)
        value = float(whole.replace(",", "") + frac)
        if m.group(0).lstrip().startswith("-"):
            value = -value
        found.append(ShownNumber(m.group(0).strip(), value, max(len(frac) - 1, 0), bool(pct), m.start(1)))
    return found


def matches(shown: ShownNumber, value: float, *, percent_of_count: bool = False) -> bool:
    """Whether ``shown`` is ``value`` rounded to the decimals it shows.

    A percent ("24%") comes from a fraction (0.24) unless ``percent_of_count`` (a question's own
    "50%"); a fraction may also be shown as a bare percent number ("73.4" for 0.734).
    """
    if isinstance(value, bool) or not math.isfinite(value):
        return False
    tol = 0.5 * 10 ** (-shown.decimals) + 1e-9
    if shown.percent and not percent_of_count:
        return abs(value) <= 1.0 and abs(value * 100 - shown.value) <= tol
    candidates = [value, value * 100] if abs(value) <= 1.0 else [value]
    return any(abs(c - shown.value) <= tol for c in candidates)


def states(shown: ShownNumber, value: float) -> bool:
    """Whether ``shown`` states ``value`` with its meaning intact: matched, and within 5% of it."""
    if not matches(shown, value):
        return False
    candidates = [value * 100] if shown.percent else ([value, value * 100] if abs(value) <= 1.0 else [value])
    return any(c == shown.value or c == 0 or abs(shown.value - c) / abs(c) <= MAX_RELATIVE_ERROR
               for c in candidates if abs(c - shown.value) <= 0.5 * 10 ** (-shown.decimals) + 1e-9)


def shows(text: str, value: float) -> bool:
    """Whether ``text`` states ``value`` somewhere (any sensible rounding; "1" is not 0.734)."""
    return any(states(n, value) for n in numbers_in(text))
