"""segment_summary: how does a segment of sessions behave? Funnel, conversion, revenue, users."""

from __future__ import annotations

import re
from typing import Any, Mapping

import pandas as pd

from tools.context import ToolContext, date_range, num
from tools.words import count, human_date, money, pct
from tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_number


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
        "conversion_rate": num(steps["with_purchase"] / n, 3) if n else None,
        "cart_rate": num(steps["with_cart"] / n, 3) if n else None,
        "cart_to_purchase_rate": num(steps["with_purchase"] / steps["with_cart"], 3) if steps["with_cart"] else None,
        "revenue": num(revenue),
        "revenue_per_session": num(revenue / n) if n else None,
        "avg_order_value": num(revenue / steps["with_purchase"]) if steps["with_purchase"] else None,
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
    s = s[date_range(since, until).contains(s["start"])]
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


def _scope(filters: Mapping[str, Any]) -> str:
    parts = []
    for k, v in filters.items():
        if k == "since":
            parts.append(f"since {human_date(v)}")
        elif k == "until":
            parts.append(f"up to {human_date(v)}")
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts) or "all sessions"


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with the conversion and its denominator, then the funnel, revenue and refunds."""
    scope = _scope(r.get("filters") or {})
    if not r.get("sessions"):
        return f"No sessions match these filters ({scope})."
    return (
        f"{pct(r['conversion_rate'])} of the {count(r['sessions'], 'session')} ({scope}; {count(r['users'], 'user')}) "
        f"ended in a purchase: {r['with_purchase']:,} of {r['sessions']:,}. {r.get('with_cart'):,} added to the cart "
        f"(cart rate {pct(r.get('cart_rate'))}); revenue {money(r['revenue'])}, average order value "
        f"{money(r.get('avg_order_value'))}, {count(r.get('refunds'), 'refund')}."
    )


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A segment states its sessions, purchases and conversion (the denominator with the rate)."""
    if "conversion_rate" not in r:
        return []
    return (need_number(r.get("sessions"), "sessions") + need_number(r.get("with_purchase"), "sessions with a purchase")
            + need_number(r.get("conversion_rate"), "conversion rate"))


def remember(args: Mapping[str, Any], r: Mapping[str, Any], state: ConversationState) -> None:
    state.last_call = {"name": "segment_summary", "args": dict(args)}


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any]:
    return ent.filters("since", "until", "category", "country", "device")


# A rate or share over sessions is a segment question, not a search.
_AGGREGATE = re.compile(r"\b(?:share|rate|percentage|percent|funnel|average\s+order\s+value|aov|how\s+many\s+sessions|conversion)\b", re.I)

TOOL = ToolSpec(
    func=segment_summary,
    render=render,
    key_facts=key_facts,
    remember=remember,
    repeatable=frozenset({"since", "until", "category", "country", "device"}),
    routes=(
        Route(
            label="segment",
            args=_args,
            claims=(("search", _AGGREGATE),),
            examples=(
                "conversion rate of {d} users {t}", "how did {c} do {t}?", "funnel for {c}", "what is the conversion rate?",
                "how many sessions ended in a purchase {t}?", "revenue from {c} {t}", "average order value on {d}",
                "cart abandonment rate {t}", "how many users bought {c} {t}?", "show the funnel for {d} users",
                "sales summary {t}", "conversion in {c} vs overall", "how many refunds {t}?", "segment stats for {c} on {d}",
                "what share of sessions convert on {d}?", "revenue per session {t}",
            ),
        ),
    ),
)
