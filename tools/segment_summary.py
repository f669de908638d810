"""segment_summary: how does a segment of sessions behave? Funnel, conversion, revenue, users.

Every number is counted by the typed query engine (:mod:`behavior.query`), the same counts
``query_metric`` reports: one definition of a session's steps, of revenue and of an order. The
steps are not nested here (``with_cart`` is every session with a cart step, viewed or not); with
a category, a session's steps and revenue are those of that category's items.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from shopsight.behavior.query import MetricQueryError
from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, num, unavailable
from shopsight.tools.words import count, human_date, money, pct
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_number


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
    filters = {k: v for k, v in {"since": since, "until": until, "category": category,
                                 "country": country, "device": device}.items() if v}
    engine = ctx.query_engine()

    def total(metric: str, *steps: str) -> Any:
        return engine.run({"metric": metric, **filters, "did": list(steps), "examples": 0}).total

    try:
        n = int(total("sessions").value or 0)
        if not n:
            return {"filters": filters, "sessions": 0, "note": "no sessions match these filters"}
        steps = {f"with_{step}": int(total("sessions", step).value or 0) for step in ("view", "cart", "checkout", "purchase")}
        sold = total("revenue")
        days = [engine.run({"metric": "sessions", **filters, "group_by": "day", "sort": "group", "descending": desc, "limit": 1,
                            "examples": 0}).rows[0].group for desc in (False, True)]
        users, buyers, refunds = int(total("users").value or 0), int(total("users", "purchase").value or 0), int(total("sessions", "refund").value or 0)
    except MetricQueryError as exc:  # a filter on a column the data lacks, an empty date range: the model can fix it
        return {**exc.to_dict(), "hint": "drop or change that filter"}
    except WorkspaceError as exc:
        return unavailable("segment figures", exc)
    revenue, orders = float(sold.value or 0.0), int(sold.units or 0)
    return {
        "filters": filters,
        "sessions": n,
        **steps,
        "users": users,
        "buyers": buyers,
        "conversion_rate": num(steps["with_purchase"] / n, 3),
        "cart_rate": num(steps["with_cart"] / n, 3),
        "cart_to_purchase_rate": num(total("cart_to_purchase").value, 3),
        "revenue": num(revenue),
        "revenue_per_session": num(revenue / n),
        "avg_order_value": num(revenue / orders) if orders else None,
        "refunds": refunds,
        "first_day": days[0],
        "last_day": days[1],
    }


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
            one_user="profile",  # "how much revenue did u00042 bring?" asks about that user
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
