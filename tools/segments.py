"""Funnel and cohort statistics for a segment of sessions (pure pandas over the session table)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tools.context import ToolContext
from tools.users import _as_ts, _num


def funnel(sessions: pd.DataFrame) -> dict[str, Any]:
    """Counts and step rates of the view → cart → checkout → purchase funnel over sessions."""
    n = int(len(sessions))
    steps = {
        "sessions": n,
        "with_view": int((sessions["n_view"] > 0).sum()),
        "with_cart": int((sessions["n_add_to_cart"] > 0).sum()),
        "with_checkout": int((sessions["n_checkout"] > 0).sum()),
        "with_purchase": int(sessions["purchased"].sum()),
    }
    revenue = float(sessions["revenue"].sum())
    buyers = int(sessions.loc[sessions["purchased"], "user_id"].nunique())
    return {
        **steps,
        "users": int(sessions["user_id"].nunique()),
        "buyers": buyers,
        "conversion_rate": _num(steps["with_purchase"] / n, 3) if n else None,
        "cart_rate": _num(steps["with_cart"] / n, 3) if n else None,
        "cart_to_purchase_rate": _num(steps["with_purchase"] / steps["with_cart"], 3) if steps["with_cart"] else None,
        "revenue": _num(revenue),
        "revenue_per_session": _num(revenue / n) if n else None,
        "avg_order_value": _num(revenue / steps["with_purchase"]) if steps["with_purchase"] else None,
        "refunds": int(sessions["n_refund"].sum()),
    }


def segment_summary(
    ctx: ToolContext,
    since: str | None = None,
    until: str | None = None,
    category: str | None = None,
    country: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """How does a segment behave? Funnel counts, conversion, revenue and users for the sessions that match.

    Use for aggregate questions ("conversion rate of mobile users since March", "how did
    electronics do last week?"). ALWAYS report the denominator (sessions or users).

    Args:
        since: Only sessions starting on or after this date (YYYY-MM-DD).
        until: Only sessions starting on or before this date (YYYY-MM-DD).
        category: Only sessions touching this product category.
        country: Only sessions from this country code.
        device: Only sessions on this device (e.g. "mobile", "desktop").
    """
    s = ctx.sessions()
    tz = s["start"].dt.tz if len(s) else None
    lo, hi = _as_ts(since, tz), _as_ts(until, tz)
    if lo is not None:
        s = s[s["start"] >= lo]
    if hi is not None:
        s = s[s["start"] <= hi + pd.Timedelta(days=1) if len(str(until)) <= 10 else s["start"] <= hi]
    if category:
        s = s[s["categories"].apply(lambda cs: category.lower() in {str(c).lower() for c in cs})]
    for column, value in (("country", country), ("device", device)):
        if value:
            if column not in s.columns:
                return {"error": f"no {column} in this data set", "hint": f"drop the {column} filter"}
            s = s[s[column].astype(str).str.lower() == value.lower()]
    filters = {k: v for k, v in {"since": since, "until": until, "category": category,
                                 "country": country, "device": device}.items() if v}
    if s.empty:
        return {"filters": filters, "sessions": 0, "note": "no sessions match these filters"}
    return {"filters": filters, **funnel(s), "first_day": str(s["start"].min())[:10], "last_day": str(s["start"].max())[:10]}
