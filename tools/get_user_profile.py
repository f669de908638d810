"""get_user_profile: who is this user? Key facts from their events."""

from __future__ import annotations

import re
from typing import Any, Mapping

import pandas as pd

from shopsight.tools.context import ToolContext, day, no_such_user, num
from shopsight.tools.registry import KeyFact, Route, ToolSpec, need_id, need_number, user_args
from shopsight.tools.words import count, human_date, money, number


def profile_facts(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Key facts for a known user (features plus recent sessions); shared by profile and compare."""
    f = ctx.features().loc[user_id]
    sessions = ctx.sessions()
    mine = sessions[sessions["user_id"].astype(str) == user_id].sort_values("start")
    ev = ctx.user_events(user_id)
    facts: dict[str, Any] = {
        "user_id": user_id,
        "first_seen": day(f["first_ts"]),
        "last_seen": day(f["last_ts"]),
        "sessions": num(f["n_sessions"]),
        "orders": num(f["orders"]),
        "revenue": num(f["monetary"]),
        "avg_order_value": num(f["avg_order_value"]),
        "days_since_last_purchase": num(f["recency_days"], 1),
        "days_since_last_event": num(f["days_since_last_event"], 1),
        "cart_rate": num(f["cart_rate"], 3),
        "purchase_rate": num(f["purchase_rate"], 3),
        "refund_rate": num(f["refund_rate"], 3),
        "top_category": None if pd.isna(f.get("top_category")) else str(f.get("top_category")),
    }
    for opt in ("device", "country"):
        if opt in ev.columns:
            values = ev[opt].dropna().astype(str).value_counts()
            facts["devices" if opt == "device" else "countries"] = list(values.index[:3])
    facts["recent_sessions"] = [str(s) for s in mine["session_id"].tail(3)]
    return facts


def get_user_profile(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Who is this user? Key facts: first/last seen, sessions, orders, revenue, rates, top category.

    Use when the question asks about one user in general ("tell me about u00042", "profile of user 7").
    Not for scores: use predict_intent, predict_churn or score_risk for those.

    Args:
        user_id: The user's id, e.g. "u00042".
    """
    user_id = str(user_id)
    if not ctx.has_user(user_id):
        return no_such_user(ctx, user_id)
    facts = profile_facts(ctx, user_id)
    facts["citations"] = {"sessions": facts["recent_sessions"]}
    return facts


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with what the user is worth and how active, then when, then what they buy."""
    orders = r.get("orders") or 0
    text = f"User {r['user_id']} has spent {money(r.get('revenue') or 0)} over {count(orders, 'order')}"
    if orders:
        text += f" (average order value {money(r.get('avg_order_value'))})"
    text += (f" in {count(r.get('sessions'), 'session')}, first seen {human_date(r.get('first_seen'))} and last seen "
             f"{human_date(r.get('last_seen'))}.")
    if orders and r.get("days_since_last_purchase") is not None:
        text += f" The last purchase was {number(r['days_since_last_purchase'])} days before the data ends."
    if r.get("top_category"):
        text += f" Top category: {r['top_category']}."
    if r.get("devices"):
        text += f" Devices: {', '.join(r['devices'])}."
    return text


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A profile names its user and their session and order counts."""
    return need_id(r.get("user_id"), "user") + need_number(r.get("sessions"), "sessions") + need_number(r.get("orders"), "orders")


TOOL = ToolSpec(
    func=get_user_profile,
    render=render,
    key_facts=key_facts,
    routes=(
        Route(
            label="profile",
            per_user=True,
            select_default=True,
            args=user_args,
            select_words=re.compile(r"\b(?:profile|who\s+is|spent|orders?|overview|details|facts)\b", re.I),
            examples=(
                "tell me about {u}", "who is {u}?", "profile of {u}", "give me an overview of {u}", "what do we know about {u}",
                "summarize customer {u}", "key facts for {u}", "show {u}'s profile", "describe user {u}", "how valuable is {u}?",
                "how much has {u} spent?", "how many orders does {u} have?", "when did {u} first visit?", "basic info on {u} please",
                "what kind of shopper is {u}", "{u} details", "lifetime value of {u}", "what's {u}'s favourite category?",
            ),
            followups=("tell me more about her", "who is he?", "and his profile?"),
        ),
    ),
)
