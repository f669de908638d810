"""recommend_items: what should we show or send this user? Items, a reason each in words, evidence sessions."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, day, mask_text, no_such_user, num, unavailable
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_id, need_phrase
from shopsight.tools.words import count, human_date, money, pct, quoted

MAX_ITEMS = 10
RECENT_DAYS = 30  # "viewed 3 Audio items in the last 30 days"


def recommend_items(ctx: ToolContext, user_id: str, limit: int = 5) -> dict[str, Any]:
    """Which products should we show or send this user? Recommended items with a reason each and evidence sessions.

    Use when the question asks what to recommend, show, offer or put in an email for ONE user
    ("what should we recommend to u00042?"). A user with no history gets the shop's popular items.

    Args:
        user_id: The user's id, e.g. "u00042".
        limit: How many items (1-10).
    """
    user_id = str(user_id)
    if not ctx.has_user(user_id):
        return no_such_user(ctx, user_id)
    try:
        model = ctx.model("recommend")
    except WorkspaceError as exc:
        return unavailable("recommendations", exc)
    limit = max(1, min(int(limit or 5), MAX_ITEMS))
    mine = ctx.user_events(user_id)
    h = model.history(mine)
    personal = bool((h.items >= 0).any() or h.category_weight)
    top = model.recommend_for(h, limit, "model" if personal else "popularity")
    asof = model.tables_asof_
    names = ctx.item_names()
    from shopsight.behavior.models.recommend import item_events  # torch comes with it: imported when a recommendation is asked for

    rows = item_events(mine)
    # numpy columns: five items' reasons filter these rows ~15 times, and a pandas filter costs ~1 ms each
    cols = {c: rows[c].astype(str).to_numpy() for c in ("event", "item_id", "category", "session_id")}  # NA reads "<NA>"
    cols["ts"] = rows["ts"].to_numpy(dtype="datetime64[ns]")
    end = ctx.get_events()["ts"].max().tz_convert(None).to_datetime64()
    items, sessions = [], []
    for p in top:
        item = _item(model, p, names)
        if personal:
            item.update(_reasons(model, h, p, cols, end, names))
        if not item.get("reason"):
            item["reason"] = f"one of the shop's most carted or bought items ({count(item['popular_users'], 'user')} in the {model.popular_days} days to {human_date(day(asof))})"
        if item.get("session_id") and item["session_id"] not in sessions:
            sessions.append(item["session_id"])
        items.append(item)
    return {
        "user_id": user_id,
        "basis": "their history" if personal else "the shop's popular items (no history for this user)",
        "items": items,
        "popular_asof": day(asof),
        "popular_days": model.popular_days,
        "model": model.label,
        "citations": {"sessions": sessions[:5], "model": model.label},
    }


def _item(model: Any, p: int, names: Mapping[str, str]) -> dict[str, Any]:
    item_id = str(model.items_[p])
    item: dict[str, Any] = {"item_id": item_id, "category": model.item_category_[p] or None,
                            "price": num(model.item_price_[p]), "popular_users": int(model.popularity_[p])}
    if item_id in names:
        item["name"] = mask_text(names[item_id])
    return item


def _reasons(model: Any, h: Any, p: int, cols: Mapping[str, np.ndarray], end: np.datetime64,
             names: Mapping[str, str]) -> dict[str, Any]:
    """The item's reasons in words (ids, not names: names are shoppers'-side free text), each number also a field."""
    out: dict[str, Any] = {}
    said: list[str] = []
    cat = model.item_category_[p]
    if p in h.bought:
        out["bought_before"] = True
        out["repeat_share"] = model.repeat_categories_.get(cat)
        said.append(f"they bought it before and {cat} is a repeat-purchase category "
                    f"({pct(out['repeat_share'])} of its buyers buy the same item again)")
    in_cat = cols["category"] == cat if cat else np.zeros(len(cols["category"]), dtype=bool)
    recent = in_cat & (cols["ts"] >= end - np.timedelta64(RECENT_DAYS, "D"))
    if in_cat.any():
        shown, window = (recent, f"in the last {RECENT_DAYS} days") if recent.any() else (in_cat, "in all their history")
        out["category_events"], out["category_window"] = int(shown.sum()), window
        out["category_interest"] = f"{_verbs(cols['event'][shown])} {count(int(shown.sum()), f'{cat} item')} {window}"
        said.append(out["category_interest"])
        out["session_id"] = str(cols["session_id"][shown][-1])
    anchor, share = _anchor(model, h, p)
    if anchor is not None and share > 0:
        anchor_id = str(model.items_[anchor])
        out["because_of"] = {"item_id": anchor_id, "share": round(share, 3)}
        if anchor_id in names:
            out["because_of"]["name"] = mask_text(names[anchor_id])
        said.append(f"carted or bought in {pct(share)} of the sessions that showed {anchor_id}, which they looked at")
        seen = cols["item_id"] == anchor_id
        if seen.any():
            out.setdefault("session_id", str(cols["session_id"][seen][-1]))
    if said:
        out["reason"] = "; ".join(said)
    return out


def _verbs(events: np.ndarray) -> str:
    """'viewed', 'viewed or carted', 'bought' — what the user did with those items."""
    did = [w for e, w in (("view", "viewed"), ("add_to_cart", "carted"), ("purchase", "bought")) if (events == e).any()]
    return " or ".join(did) or "looked at"


def _anchor(model: Any, h: Any, p: int) -> tuple[int | None, float]:
    """The user's recent item whose sessions most often cart or buy item ``p``, and that share."""
    best, share = None, 0.0
    for q in dict.fromkeys(int(x) for x in reversed(h.items.tolist()) if x >= 0):
        s = model.neighbour_share(q, p)
        if s > share:
            best, share = q, s
    return best, share


def _label(item: Mapping[str, Any]) -> str:
    """'"Name" (i00042)', or the id alone without a catalogue name."""
    return f'"{quoted(item["name"])}" ({item["item_id"]})' if item.get("name") else str(item["item_id"])


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with the items for the user, then why: each category's interest once, each item's co-occurrence."""
    items = r.get("items", [])
    if not items:
        return f"I have no items to recommend to user {r['user_id']}: every candidate was already bought."
    listed = ", ".join(_label(i) + "".join(f", {x}" for x in (i.get("category"), money(i["price"]) if i.get("price") is not None else None) if x)
                       for i in items)
    if r.get("basis", "").startswith("the shop's popular"):
        why = ", ".join(f"{i['item_id']} by {count(i['popular_users'], 'user')}" for i in items)
        return (f"User {r['user_id']} has no history yet, so I would show the shop's popular items: {listed}. "
                f"In the {r.get('popular_days')} days to {human_date(r.get('popular_asof'))} they were carted or bought: {why}. "
                f"(Ranked by {r.get('model')}.)")
    why: list[str] = []
    by_window: dict[str, dict[str, int]] = {}
    for i in items:
        if i.get("category_events"):
            by_window.setdefault(i["category_window"], {})[str(i["category"])] = i["category_events"]
    for window, cats in by_window.items():
        why.append(f"{window} they viewed, carted or bought " + ", ".join(count(n, f"{c} item") for c, n in cats.items()))
    repeat = [i["item_id"] for i in items if i.get("bought_before")]
    if repeat:
        why.append(f"they bought {', '.join(repeat)} before, in a repeat-purchase category")
    anchors: dict[str, list[Mapping[str, Any]]] = {}
    for i in items:
        if b := i.get("because_of"):
            anchors.setdefault(b["item_id"], []).append(i)
    if anchors:  # each item they looked at named once: a clause said five times over reads as a loop
        pairs = [f"after {_label(group[0]['because_of'])} " + ", ".join(f"{i['item_id']} {pct(i['because_of']['share'])}" for i in group)
                 for group in anchors.values()]
        why.append("of the sessions showing an item they looked at, the share that went on to cart or buy each one: " + "; ".join(pairs))
    rest = [i["item_id"] for i in items if not i.get("because_of") and not i.get("category_interest")]
    if rest:
        why.append(f"{', '.join(rest)} {'is' if len(rest) == 1 else 'are'} among the shop's popular items")
    return f"For user {r['user_id']} I would recommend {listed}. Why: " + "; ".join(why) + f". (Ranked by {r.get('model')}.)"


_POPULAR = re.compile(r"\bpopular\b", re.I)


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A recommendation names the user and its first item; for a user without history, says the items are popular ones."""
    items = r.get("items") or []
    facts = need_id(r.get("user_id"), "user") + (need_id(items[0]["item_id"], "the first item") if items else [])
    if str(r.get("basis", "")).startswith("the shop's popular"):
        facts += need_phrase(_POPULAR, "that these are the shop's popular items (no history)")
    return facts


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any] | None:
    user = state.user(ent)
    if not user:
        return None
    return {"user_id": user} | ({"limit": min(ent.limit, MAX_ITEMS)} if ent.limit else {})


TOOL = ToolSpec(
    func=recommend_items,
    render=render,
    key_facts=key_facts,
    routes=(
        Route(
            label="recommend",
            per_user=True,
            args=_args,
            examples=(
                "what should we recommend to {u}?", "what to put in {u}'s next email", "which products should we show {u}?",
                "recommend items for {u}", "product recommendations for {u}", "what should we offer {u}?",
                "which items should we send {u}?", "what products would {u} like?", "suggest products for {u}",
                "what to show {u} on the home page", "cross-sell ideas for {u}", "what should go in {u}'s newsletter?",
                "top {n} items to recommend to {u}", "personalised offers for {u}", "next best product for {u}",
                "what would you recommend for {u}?",
            ),
            followups=("and what should we recommend to her?", "what should we show him?", "and which products for them?"),
        ),
    ),
)
