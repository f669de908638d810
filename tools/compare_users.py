"""compare_users: how do these users differ? Key facts side by side."""

from __future__ import annotations

from typing import Any, Mapping

from shopsight.tools.context import ToolContext, no_such_user
from shopsight.tools.get_user_profile import profile_facts
from shopsight.tools.words import count, human_date, money
from shopsight.tools.registry import NO_SUCH, ConversationState, Entities, KeyFact, Route, ToolSpec, need_id, need_number, need_phrase

MAX_COMPARE = 5


def compare_users(ctx: ToolContext, user_ids: list[str]) -> dict[str, Any]:
    """How do these users differ? Key facts side by side for 2 to 5 users.

    Use when the question names several users and asks to compare them ("compare u00042 and u00077").

    Args:
        user_ids: The users' ids, e.g. ["u00042", "u00077"]; at most 5.
    """
    ids = [str(u) for u in (user_ids or [])][:MAX_COMPARE]
    if len(ids) < 2:
        return {"error": "need at least two users", "hint": "give two to five user ids, e.g. ['u00042', 'u00077']"}
    known = [u for u in ids if ctx.has_user(u)]
    unknown = [u for u in ids if not ctx.has_user(u)]
    users = []
    for u in known:
        facts = profile_facts(ctx, u)
        facts.pop("recent_sessions", None)
        users.append(facts)
    result: dict[str, Any] = {"users": users, "citations": {"users": known}}
    if unknown:
        result["unknown_users"] = unknown
        missing = no_such_user(ctx, unknown[0])
        result["hint"] = missing["hint"]  # for a planning model; the answer says it in words (render)
        result["example_id"], result["n_users"] = missing["example_id"], missing["n_users"]
    return result


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with who has spent more, then every user side by side."""
    users = list(r.get("users") or [])
    text = ""
    if len(users) >= 2:
        by_spend = sorted(users, key=lambda u: (-(u.get("revenue") or 0), str(u["user_id"])))
        top, rest = by_spend[0], by_spend[1:]
        if (top.get("revenue") or 0) == (rest[0].get("revenue") or 0):
            text = f"{top['user_id']} and {rest[0]['user_id']} have spent the same ({money(top.get('revenue') or 0)}). "
        else:
            text = (f"{top['user_id']} has spent the most: {money(top.get('revenue') or 0)}, against "
                    + ", ".join(f"{money(u.get('revenue') or 0)} for {u['user_id']}" for u in rest) + ". ")
    lines = [
        f"{u['user_id']}: {money(u.get('revenue') or 0)} over {count(u.get('orders'), 'order')} in "
        f"{count(u.get('sessions'), 'session')}, last seen {human_date(u.get('last_seen'))}"
        + (f", top category {u['top_category']}" if u.get("top_category") else "")
        for u in users
    ]
    text += "; ".join(lines) + "." if lines else ""
    if r.get("unknown_users"):
        text += f" There is no such user: {', '.join(r['unknown_users'])}."
        if r.get("example_id"):
            text += f" This workspace's user ids look like {r['example_id']} ({count(r.get('n_users'), 'user')})."
    return text.strip()


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """Every user with its spend, and the users that do not exist."""
    facts: list[KeyFact] = []
    for u in r.get("users") or []:
        facts += need_id(u.get("user_id"), "user") + need_number(u.get("revenue"), f"revenue of {u.get('user_id')}")
    for u in r.get("unknown_users") or []:
        facts += need_id(u, "the unknown user")
    if r.get("unknown_users"):
        facts += need_phrase(NO_SUCH, "that some users do not exist")
    return facts


def remember(args: Mapping[str, Any], r: Mapping[str, Any], state: ConversationState) -> None:
    state.last_user_ids = list(args.get("user_ids") or [])
    state.last_ranked = list(args.get("user_ids") or [])


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any]:
    ids = ent.user_ids or state.last_user_ids or state.last_ranked[:2]
    if len(ids) < 2 and state.last_ranked:
        ids = list(dict.fromkeys(ids + state.last_ranked))[:2]
    return {"user_ids": ids[:MAX_COMPARE]}


TOOL = ToolSpec(
    func=compare_users,
    render=render,
    key_facts=key_facts,
    remember=remember,
    routes=(
        Route(
            label="compare",
            many_users=True,
            args=_args,
            examples=(
                "compare {u} and {u2}", "how do {u} and {u2} differ?", "{u} vs {u2}", "difference between {u} and {u2}",
                "compare users {u}, {u2}", "which is more valuable, {u} or {u2}?", "contrast {u} with {u2}", "side by side {u} and {u2}",
                "put {u} next to {u2}", "how does {u} compare to {u2}",
            ),
        ),
    ),
)
