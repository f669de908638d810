"""risk_decisions: what did risk control decide? Blocked, reviewed and allowed orders with their reasons, and the false alarms."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Mapping

import pandas as pd

from shopsight.behavior.decisions import load_decisions, load_labels
from shopsight.tools.context import ToolContext, date_range, day, mask_text, num
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_id, need_number
from shopsight.tools.words import count, human_date, pct

MAX_LISTED = 10
_DECISIONS = ("allow", "review", "block")


def risk_decisions(
    ctx: ToolContext,
    decision: Literal["block", "review", "allow", "flagged", "any"] = "flagged",
    label: Literal["any", "false_alarm", "fraud", "unlabelled"] = "any",
    since: str | None = None,
    until: str | None = None,
    limit: int = 5,
    subject: Literal["any", "orders", "users"] = "any",
) -> dict[str, Any]:
    """What did risk control decide, and why? Orders blocked, held for review or allowed as they arrived, with reasons and the model version.

    Use when the question is about risk DECISIONS already made by `shopsight watch`: "what did we block
    today and why?", "how many orders went to review this week?", "show the false alarms"
    (decisions an analyst marked as a false alarm). ALWAYS report the count, not only the list.

    Args:
        decision: "block", "review", "allow", "flagged" (review or block) or "any".
        label: The analysts' verdict: "false_alarm", "fraud" (confirmed), "unlabelled" or "any".
        since: First day (YYYY-MM-DD) of the orders' time; none: from the first decision.
        until: Last day (YYYY-MM-DD), inclusive; none: to the last decision.
        limit: How many decisions to list (1-10), newest first.
        subject: "orders" (decisions on an order as it arrived), "users" (on an account whose behaviour changed
            without an order) or "any".
    """
    rng = date_range(since, until)
    table = load_decisions(ctx.workspace)
    if subject not in ("any", "orders", "users"):
        raise ValueError(f"subject must be 'any', 'orders' or 'users', not {subject!r}")
    out: dict[str, Any] = {"decision": decision, "label": label, "since": since, "until": until, "subject": subject}
    if table.empty:
        return out | {"n": 0, "by_decision": {d: 0 for d in _DECISIONS}, "decisions": [], "models": [],
                      "note": "no risk decisions are recorded in this workspace yet: `shopsight watch PATH` decides orders as they arrive",
                      "citations": {"orders": [], "model": None}}
    # the event time each decision judged (a replay of May's events decided in December is about May);
    # the wall clock only for a decision recorded without one
    when = table["event_ts"].where(table["event_ts"].notna(), table["decided_at"])
    table = table.assign(when=when)[rng.contains(when).to_numpy()]
    labels = _latest_labels(ctx)
    key = table["order_id"].fillna("user:" + table["user_id"].astype(str)).astype(str)
    table = table.assign(analyst_label=key.map(labels).astype("object"))
    by = {d: int((table["decision"] == d).sum()) for d in _DECISIONS}
    if decision == "flagged":
        chosen = table[table["decision"].isin(["review", "block"])]
    elif decision == "any":
        chosen = table
    else:
        chosen = table[table["decision"] == decision]
    if label == "unlabelled":
        chosen = chosen[chosen["analyst_label"].isna()]
    elif label != "any":
        chosen = chosen[chosen["analyst_label"] == label]
    # Asked about orders (or users), the other kind is counted beside, not listed: "0 orders went to review" alone
    # would hide the account held for review meanwhile.
    is_order = chosen["order_id"].notna()
    others = 0
    if subject == "orders":
        chosen, others = chosen[is_order], int((~is_order).sum())
    elif subject == "users":
        chosen, others = chosen[~is_order], int(is_order.sum())
    chosen = chosen.sort_values("when", ascending=False, kind="stable")
    limit = max(1, min(int(limit or 5), MAX_LISTED))
    rows = [_row(r) for _, r in chosen.head(limit).iterrows()]
    models = sorted(set(chosen["model"].dropna().astype(str))) or sorted(set(table["model"].dropna().astype(str)))
    out |= {
        "n": int(len(chosen)),
        "n_orders": int(chosen["order_id"].notna().sum()),
        "n_other_subject": others,
        "by_decision": by,
        "labelled": {"false_alarm": int((table["analyst_label"] == "false_alarm").sum()), "fraud": int((table["analyst_label"] == "fraud").sum())},
        "first_day": day(table["when"].min()) if len(table) else None,
        "last_day": day(table["when"].max()) if len(table) else None,
        "decisions": rows,
        "models": models,
        "citations": {"orders": [r["order_id"] for r in rows if r.get("order_id")], "model": ", ".join(models) or None},
    }
    return out


def _latest_labels(ctx: ToolContext) -> dict[str, str]:
    """Each decided order's (or user's) latest analyst label."""
    labels = load_labels(ctx.workspace)
    if labels.empty:
        return {}
    key = labels["order_id"].fillna("user:" + labels["user_id"].astype(str)).astype(str)
    return dict(zip(key, labels["label"].astype(str)))  # later rows overwrite earlier: the latest word


def _row(r: pd.Series) -> dict[str, Any]:
    reasons = json.loads(r["reasons"]) if isinstance(r["reasons"], str) else []
    forced = json.loads(r["forced_by"]) if isinstance(r["forced_by"], str) else None
    out: dict[str, Any] = {
        "order_id": None if pd.isna(r["order_id"]) else str(r["order_id"]),
        "user_id": str(r["user_id"]),
        "decision": str(r["decision"]),
        "score": num(r["score"], 3),
        "day": day(r["when"]),
        "reason": mask_text(reasons[0]) if reasons else None,
        "model": str(r["model"]),
    }
    if forced:
        out["forced_by"] = str(forced.get("name"))
    if isinstance(r.get("expected_precision"), float) and not pd.isna(r["expected_precision"]):
        out["expected_precision"] = num(r["expected_precision"], 3)
    if isinstance(r.get("analyst_label"), str):
        out["analyst_label"] = r["analyst_label"]
    return out


_WHAT = {"block": "blocked", "review": "held for review", "allow": "allowed", "flagged": "held for review or blocked", "any": "decided on"}


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with the count asked about (and the window), then each decision listed with its reason, then the model."""
    if r.get("note"):
        return "No risk decisions are recorded yet: `shopsight watch PATH` decides orders as they arrive."
    window = _window(r)
    label = {"false_alarm": " that an analyst marked as a false alarm", "fraud": " that an analyst confirmed as fraud",
             "unlabelled": " not yet labelled by an analyst"}.get(str(r.get("label")), "")
    n = int(r.get("n", 0))
    what = _WHAT.get(str(r.get("decision")), "decided on")
    subject = str(r.get("subject") or "any")
    if n:
        subjects = count(n, "order") if subject == "orders" else count(n, "user") if subject == "users" else _subjects(n, r.get("n_orders"))
        text = f"{window}, risk control {what} {subjects}{label}"
    else:
        nouns = {"orders": "orders", "users": "users"}.get(subject, "orders or users")
        text = f"{window}, 0 {nouns}{label} were {what} by risk control"
    others = int(r.get("n_other_subject") or 0)
    if others:
        text += (f"; {count(others, 'user')} {'was' if others == 1 else 'were'} too, on their behaviour without an order"
                 if subject == "orders" else f"; {count(others, 'order')} {'was' if others == 1 else 'were'} too")
    b = r.get("by_decision") or {}
    text += f" (of all decisions then: {b.get('block', 0)} blocked, {b.get('review', 0)} held for review, {b.get('allow', 0)} allowed)."
    listed = r.get("decisions") or []
    if listed:
        items = []
        for d in listed:
            subject = f"order {d['order_id']} (user {d['user_id']})" if d.get("order_id") else f"user {d['user_id']}"
            item = f"{subject} on {human_date(d['day'])}: {d['decision']}"
            # the reason states the probability it rests on; without one, the probability is the reason
            item += f", because {d['reason']}" if d.get("reason") else f", fraud probability {pct(d['score'])}"
            if d.get("analyst_label"):
                item += f" [analyst: {d['analyst_label'].replace('_', ' ')}]"
            items.append(item)
        shown = "" if len(listed) == n else f"The {len(listed)} latest: "
        text += f" {shown}" + "; ".join(items) + "."
    if r.get("models"):
        text += f" (Decided by {', '.join(r['models'])}.)"
    return text


def _subjects(n: int, n_orders: Any) -> str:
    """"2 orders and 1 user" (a user is decided on when their behaviour changed without an order)."""
    if not n:
        return "no orders or users"
    if not isinstance(n_orders, int):
        return count(n, "order or user", "orders or users")
    said = [count(k, noun) for k, noun in ((n_orders, "order"), (n - n_orders, "user")) if k]
    return said[0] if len(said) == 1 else f"{n:,} ({' and '.join(said)})"


def _window(r: Mapping[str, Any]) -> str:
    since, until = r.get("since"), r.get("until")
    if since and until:
        return f"From {human_date(since)} to {human_date(until)}"
    if since:
        return f"Since {human_date(since)}"
    if until:
        return f"Up to {human_date(until)}"
    return f"From {human_date(r.get('first_day'))} to {human_date(r.get('last_day'))}"


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """The count asked about; the first listed order id; for "why", its reason's gist (the rule or threshold)."""
    if r.get("note"):
        return [KeyFact("that no decisions are recorded yet", lambda a: bool(re.search(r"\bno\b.{0,40}\bdecision", a, re.I)))]
    facts = need_number(r.get("n"), "the number of decisions")
    listed = r.get("decisions") or []
    if listed:
        first = listed[0]
        facts += need_id(first.get("order_id") or first.get("user_id"), "the latest decision's subject")
        if re.search(r"\bwhy\b|reason", question, re.I) and first.get("forced_by"):
            rule = str(first["forced_by"]).replace("_", " ")
            facts.append(KeyFact(f"the rule that forced it ({rule})", lambda a: rule in a.lower()))
    return facts


_REVIEW = re.compile(r"\breview", re.I)
_BLOCK = re.compile(r"\bblock|\bstopp?ed\b|\bheld\b(?!\s+for\s+review)", re.I)
_ALLOW = re.compile(r"\ballow|\blet through|\bpassed\b", re.I)
_FALSE_ALARM = re.compile(r"false\s+alarm|false\s+positive|wrongly\s+(?:flagged|blocked)|mistakes?", re.I)
_ORDERS = re.compile(r"\borders?\b|\bpurchases?\b|\bcheckouts?\b|\btransactions?\b", re.I)
_USERS = re.compile(r"\b(?:users?|accounts?|customers?|shoppers?|buyers?)\b", re.I)
_CONFIRMED = re.compile(r"confirmed\s+(?:as\s+)?fraud|confirmed\s+cases", re.I)


# Wording that is about decisions made, whatever score label the classifier reads in it ("blocked" is not "riskiest").
_ABOUT_DECISIONS = re.compile(r"\b(?:blocked|went\s+to\s+review|held\s+for\s+review|sent\s+to\s+review|false\s+alarms?|false\s+positives?"
                              r"|risk\s+decisions?|review\s+queue|audit\s+trail|watcher)\b|\bdid\s+we\s+block\b"
                              r"|\bhow\s+many\b.{0,30}\b(?:blocks|reviews)\b", re.I)


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if _FALSE_ALARM.search(question):
        args["label"] = "false_alarm"
        args["decision"] = "flagged"
    elif _CONFIRMED.search(question):
        args["label"] = "fraud"
    if "decision" not in args:
        blocked, reviewed = bool(_BLOCK.search(question)), bool(_REVIEW.search(question))
        args["decision"] = "flagged" if blocked and reviewed else "block" if blocked else "review" if reviewed else (
            "allow" if _ALLOW.search(question) else "flagged")
    # "how many orders went to review" counts orders (the users decided without an order are said beside); a question
    # about users or accounts keeps both kinds: a user's order blocked is that user blocked too
    if _ORDERS.search(question) and not _USERS.search(question):
        args["subject"] = "orders"
    if ent.since:
        args["since"] = ent.since
    if ent.until:
        args["until"] = ent.until
    if ent.limit:
        args["limit"] = min(ent.limit, MAX_LISTED)
    return args


TOOL = ToolSpec(
    func=risk_decisions,
    render=render,
    key_facts=key_facts,
    repeatable=frozenset({"since", "until", "decision"}),
    routes=(
        Route(
            label="risk_decisions",
            args=_args,
            claims=tuple((other, _ABOUT_DECISIONS) for other in ("top_risk", "risk", "search", "segment")),
            examples=(
                "what did we block {t} and why?", "how many orders went to review {t}?", "show the false alarms",
                "which orders were blocked {t}?", "list the orders held for review", "what did risk control decide {t}?",
                "how many orders did we block {t}?", "show the blocked orders and the reasons", "which decisions were false alarms?",
                "what went to manual review {t}?", "why did we block orders {t}?", "show me the risk decisions {t}",
                "how many false positives did the fraud rules have?", "which blocked orders were confirmed as fraud?",
                "what has the watcher flagged {t}?", "list the last {n} blocked orders", "how many reviews and blocks {t}?",
                "the review queue {t}", "what did the fraud checks stop {t}?", "audit trail of blocked orders",
            ),
        ),
    ),
)
