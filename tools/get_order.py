"""get_order: what was in this order? Its items, amount, payment, device, status and fraud risk."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import pandas as pd

from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, no_such_order, day, mask_text, num
from shopsight.tools.words import count, human_date, money, payment_words, pct, quoted
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_id, need_number

MAX_ITEMS = 10


def get_order(ctx: ToolContext, order_id: str) -> dict[str, Any]:
    """What was in this order? Its items, amount, payment, device, country, refund status and fraud-risk score.

    Use when the question asks about ONE order's contents or details ("what was in order
    o000123?", "how was o000123 paid?"). For whether an order is fraudulent, use score_risk.

    Args:
        order_id: The order's id, e.g. "o000123".
    """
    order_id = str(order_id)
    if not ctx.has_order(order_id):
        return no_such_order(ctx, order_id)
    events = ctx.get_events()
    rows = events[events["order_id"].astype("string") == order_id]
    bought = rows[rows["event"] == "purchase"]
    names = ctx.item_names()
    items = []
    for r in bought.head(MAX_ITEMS).itertuples(index=False):
        item = {"item_id": str(r.item_id), "category": None if pd.isna(r.category) else str(r.category),
                "price": num(r.price), "quantity": int(r.quantity)}
        if str(r.item_id) in names:
            item["name"] = mask_text(names[str(r.item_id)])
        items.append(item)
    first = (bought if len(bought) else rows).iloc[0]
    result: dict[str, Any] = {
        "order_id": order_id,
        "user_id": str(first["user_id"]),
        "day": day(first["ts"]),
        "session_id": str(first["session_id"]),
        "items": items,
        "n_items": int(bought["quantity"].sum()),
        "amount": num((bought["price"].fillna(0) * bought["quantity"]).sum()),
        "refunded": bool((rows["event"] == "refund").any()),
    }
    for column in ("payment", "device", "country"):
        if column in rows.columns and pd.notna(first[column]):
            result[column] = mask_text(str(first[column]))
    if tail := re.fullmatch(r"[a-z]+_(\d{4})", str(result.get("payment", ""))):
        result["card_last4"] = tail.group(1)  # "visa_1317" is said "a Visa card ending 1317"
    cites: dict[str, Any] = {"sessions": [result["session_id"]]}
    try:
        model = ctx.model("risk")
        if hasattr(model, "score_order"):
            scored = model.score_order(events, order_id)
            result["risk_probability"] = num(scored.get("probability"), 3)
            result["risk_model"] = str(scored.get("model", ""))
            cites["model"] = result["risk_model"]
    except WorkspaceError:
        pass  # no risk model trained: the order's facts stand on their own
    decided = recorded_decision(ctx, order_id)
    if decided:
        result["decision"] = decided
        if decided["model"] != cites.get("model"):
            cites["models"] = [decided["model"]]  # the version that decided, beside the one that scores now
    result["citations"] = cites
    return result


def recorded_decision(ctx: ToolContext, order_id: str) -> dict[str, Any] | None:
    """What risk control decided when the order arrived (``shopsight watch``), or None."""
    from shopsight.behavior.decisions import load_decisions

    try:
        d = load_decisions(ctx.workspace)
    except WorkspaceError:
        return None
    rows = d[d["order_id"].astype("string") == order_id] if len(d) else d
    if not len(rows):
        return None
    row = rows.iloc[-1]
    reasons = json.loads(row["reasons"]) if isinstance(row.get("reasons"), str) else list(row.get("reasons") or [])
    return {"decision": str(row["decision"]), "score": num(row["score"], 4), "model": str(row["model"]),
            "reason": mask_text(str(reasons[0])) if reasons else None}


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with who ordered what for how much and when, then how it was paid, its status and risk."""
    # item names are the catalogue's free text: quoted, so a "6" in "Max 6 Paperback" is not a claim
    items = "; ".join(f"{_name(i)} ({i.get('category')}), {i['quantity']} at {money(i.get('price'))}" for i in r.get("items", []))
    paid = ", ".join(f"{k} {payment_words(r[k]) if k == 'payment' else r[k]}" for k in ("payment", "device", "country") if r.get(k))
    text = (f"Order {r['order_id']} was placed by user {r['user_id']} on {human_date(r.get('day'))} for "
            f"{money(r.get('amount'))}: {count(r.get('n_items'), 'item')} (session {r.get('session_id')})"
            + (f"; {paid}" if paid else "") + f". Items: {items}.")
    text += " It was refunded." if r.get("refunded") else " It was not refunded."
    d = r.get("decision")
    if d:
        text += (f" When it arrived, risk control decided {d['decision']} ({d['model']}"
                 + (f": {d['reason']}" if d.get("reason") else f", fraud probability {pct(d['score'])}") + ").")
    if r.get("risk_probability") is not None:
        text += f" {'Scored now, on its own, its' if d else 'Its'} fraud-risk probability is {pct(r['risk_probability'])}."
    return text


def _name(item: Mapping[str, Any]) -> str:
    return f'"{quoted(item["name"])}"' if item.get("name") else str(item["item_id"])


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """An order answer names the order and states its amount."""
    return need_id(r.get("order_id"), "order") + need_number(r.get("amount"), "amount")


def remember(args: Mapping[str, Any], r: Mapping[str, Any], state: ConversationState) -> None:
    state.last_order_id = str(args.get("order_id"))
    state.last_user_ids = []  # "is it fraudulent?" next is about the order, not its buyer
    state.last_call = {"name": "get_order", "args": dict(args)}


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any] | None:
    order = (ent.order_ids or [state.last_order_id])[0]
    return {"order_id": order} if order else None


TOOL = ToolSpec(
    func=get_order,
    render=render,
    key_facts=key_facts,
    remember=remember,
    routes=(
        Route(
            label="order",
            takes_order=True,
            args=_args,
            examples=(
                "show order {o}", "what was in order {o}?", "details of order {o}", "how was order {o} paid?",
                "look up order {o}", "what did order {o} contain?", "items in order {o}", "when was order {o} placed?",
                "which device was order {o} placed on?", "total amount of order {o}", "who placed order {o}?",
                "was order {o} refunded?", "pull up {o}", "order {o} summary",
            ),
        ),
    ),
)
