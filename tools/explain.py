"""What the three score tools share: one model's explanation cut to what an answer needs, and its text.

Not a tool module (it defines no ``TOOL``): ``predict_intent``, ``predict_churn`` and
``score_risk`` each declare themselves in their own file and call these helpers.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, day, mask_text, no_such_user, num, unavailable
from shopsight.tools.registry import KeyFact, need_id, need_number
from shopsight.tools.words import count, human_date, mentions, money, number, pct, words_for

MAX_FACTORS = 3
MAX_EVIDENCE = 3
WHAT = {"intent": "purchase-intent", "churn": "churn", "risk": "fraud-risk"}

_WHY = re.compile(r"\b(why|explain\w*|reasons?|factors?|driv\w*|how come|because|caus\w*|behind)\b", re.I)
_WHAT_BUY = re.compile(r"\bwhat\b.{0,40}\b(?:buy|purchase|order|want|interested)|\bwhich\s+(?:categor|product|item)", re.I)


_REASON_KEYS = ("kind", "key", "sentence", "direction", "value", "typical", "without", "session_id", "day")


def compact_explanation(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A model's explain() dict cut to what an answer needs, numbers rounded, texts masked."""
    out: dict[str, Any] = {"model": str(raw.get("model", "")), "user_id": raw.get("user_id")}
    if raw.get("order_id") is not None:
        out["order_id"] = str(raw["order_id"])
    out["probability"] = num(raw.get("probability"), 3)
    for key in ("threshold", "score"):
        if raw.get(key) is not None:
            out[key] = num(raw.get(key), 3)
    if raw.get("horizon_days") is not None:
        out["horizon_days"] = int(raw["horizon_days"])
    factors = []
    for f in list(raw.get("factors") or [])[:MAX_FACTORS]:
        value = f.get("value")
        factors.append({
            "name": str(f.get("name")),
            "value": num(value, 3) if isinstance(value, (int, float)) else mask_text(str(value)),
            "direction": str(f.get("direction", "")),
        })
    out["factors"] = factors
    if raw.get("reasons"):  # the model's reasons in words, most important first (behavior/models glossary)
        out["reasons"] = [{k: (mask_text(v) if isinstance(v, str) and k == "sentence" else
                               num(v, 3) if isinstance(v, float) else v)
                           for k, v in r.items() if k in _REASON_KEYS} for r in raw["reasons"][:MAX_FACTORS]]
    if raw.get("next_categories"):  # intent: what the user is most likely to buy next
        out["next_categories"] = [{"category": str(c["category"]), "share": num(c.get("share"), 3)}
                                  for c in raw["next_categories"][:3]]
    rules = []
    for r in list(raw.get("rules") or []):
        if isinstance(r, dict) and "fired" in r and not r["fired"]:
            continue  # a rule that did not fire is no reason for the score
        rules.append(mask_text(r if isinstance(r, str) else str(r.get("name") or r.get("rule") or r)))
    out["rules"] = rules[:MAX_FACTORS]
    evidence = []
    for e in list(raw.get("evidence") or [])[:MAX_EVIDENCE]:
        item = {"session_id": str(e.get("session_id")), "day": day(e.get("ts")), "event": str(e.get("event", "")),
                "detail": mask_text(str(e.get("detail", "")))}
        if isinstance(e.get("events"), Mapping):  # the session's event counts: the numbers an answer may state
            item["events"] = {mask_text(str(k)): int(v) for k, v in e["events"].items()}
            item["categories"] = [mask_text(str(c)) for c in e.get("categories") or []]
            item["rules"] = [str(x) for x in e.get("rules") or []]  # the risk rules this session is evidence for
            for key in ("order_id", "amount", "lines"):
                if e.get(key) is not None:
                    item[key] = e[key] if key != "amount" else num(e[key], 2)
        evidence.append(item)
    out["evidence"] = evidence
    sessions = list(dict.fromkeys(e["session_id"] for e in evidence if e["session_id"] != "None"))
    out["citations"] = {"sessions": sessions, "model": out["model"]}
    return out


def explain_user(ctx: ToolContext, name: str, user_id: str) -> dict[str, Any]:
    """One user's explanation by model ``name``, or the error result the model can act on."""
    user_id = str(user_id)
    if not ctx.has_user(user_id):
        return no_such_user(ctx, user_id)
    try:
        model = ctx.model(name)
    except WorkspaceError as exc:
        return unavailable(f"{name} model", exc)
    return compact_explanation(model.explain(ctx.get_events(), user_id))


# How a score reads, per model: the quantity, and the verdict words for high / elevated / low scores.
_READ = {
    "churn": ("churn probability", "is likely to churn", "is at elevated risk of churning", "is unlikely to churn"),
    "intent": ("purchase-intent probability", "is likely to buy soon", "is more likely than most to buy soon",
               "is unlikely to buy soon"),
    "risk": ("fraud-risk probability", "looks like a fraud risk", "shows some fraud-risk signals", "does not look fraudulent"),
}
_EVENT_WORDS = {"add_to_cart": "cart adds", "remove_from_cart": "cart removals", "view": "views", "purchase": "purchases",
                "search": "searches", "checkout": "checkouts", "review": "reviews", "refund": "refunds", "login": "logins"}


def verdict(metric: str, p: float, threshold: float | None) -> str:
    """The verdict words for a probability: likely at 50% and above, elevated above the model's own threshold."""
    _, high, elevated, low = _READ.get(metric, (metric, "scores high", "scores above average", "scores low"))
    if p >= 0.5:
        return ("is very likely to churn" if metric == "churn" and p >= 0.8 else high)
    if threshold is not None and p >= threshold:
        return elevated
    return low


def session_activity(e: Mapping[str, Any], rules: bool = True) -> str:
    """What one evidence session held, in words: "5 views, 1 cart add in Beauty, Fashion" (from its counts)."""
    counts = e.get("events")
    if not isinstance(counts, Mapping):
        return plain_detail(str(e.get("detail", "")))
    said = ", ".join(f"{n} {_event_words(k, n)}" for k, n in counts.items())
    cats = list(e.get("categories") or [])
    said += f" in {', '.join(cats)}" if cats else ""
    if e.get("order_id") and e.get("amount") is not None:
        lines = e.get("lines")
        said = f"order {e['order_id']} of {money(e['amount'])}" + (f" ({count(lines, 'line')})" if lines else "") + f"; the session: {said}"
    elif e.get("order_id"):
        said += f" (order {e['order_id']})"
    if rules and e.get("rules"):
        said = f"{flagged_by(e['rules'])}: {said}"
    return said


def flagged_by(rules: Any) -> str:
    """The risk rules a session is evidence for, in words: "flagged by the velocity rule and the bot velocity rule"."""
    return "flagged by " + " and ".join(f"the {str(name).replace('_', ' ')} rule" for name in rules)


def _event_words(event: str, n: int) -> str:
    """An event type counted in words: 1 cart add, 2 cart adds, 1 search, 3 searches."""
    plural = _EVENT_WORDS.get(event, words_for(event))
    if n != 1 or event not in _EVENT_WORDS:
        return plural
    return plural[:-2] if plural.endswith("ches") else plural[:-1]


def plain_detail(text: str) -> str:
    """An evidence line with the event log's names in words ("6 add_to_cart" → "6 cart adds")."""
    return re.sub(r"\b(\d+) ([a-z_]+)\b", lambda m: f"{m.group(1)} {_EVENT_WORDS.get(m.group(2), words_for(m.group(2)))}", text)


def reason_sentences(r: Mapping[str, Any]) -> list[str]:
    """The reasons in words: the model's own sentences when it gives them, else its factors in plain words."""
    if r.get("reasons"):
        out = []
        for i, x in enumerate(r["reasons"]):
            if not x.get("sentence"):
                continue
            sentence = str(x["sentence"]).rstrip(".")
            without, p = x.get("without"), r.get("probability")
            if i == 0 and isinstance(without, (int, float)) and isinstance(p, (int, float)) and abs(without - p) >= 0.05:
                sentence += f" (without this, the estimate would be about {pct(without, 0)})"
            out.append(sentence)
        return out
    out = []
    for f in r.get("factors") or []:
        value = f.get("value")
        shown = number(value, 2) if isinstance(value, (int, float)) else str(value)
        effect = {"raises": "raises", "lowers": "lowers"}.get(str(f.get("direction")), "moves")
        out.append(f"{words_for(f['name'])} is {shown}, which {effect} the estimate")
    return out


def render_score(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with the verdict and the probability, then why (reasons), likely next categories and evidence."""
    metric = str(r.get("model") or "").split("@")[0]
    subject = f"Order {r['order_id']}" if r.get("order_id") else f"User {r.get('user_id')}"
    p = r.get("probability")
    quantity = _READ.get(metric, (f"{metric} probability",))[0]
    if not isinstance(p, (int, float)):
        return f"{subject} has no {quantity}."
    text = f"{subject} {verdict(metric, float(p), r.get('threshold'))}: the {quantity} is {pct(p)}"
    if metric == "churn" and r.get("horizon_days"):
        text += f" (no purchase in the next {r['horizon_days']} days)"
    elif metric == "intent" and r.get("horizon_days"):
        text += f" (a purchase in the next {r['horizon_days']} days)"
    text += "."
    if r.get("next_categories"):
        cats = [f"{c['category']} ({pct(c.get('share'))} of recent interest)" for c in r["next_categories"]]
        text += f" Most likely next categories: {', '.join(cats)}."
    reasons = reason_sentences(r)
    if reasons:
        text += " Why: " + "; ".join(reasons) + "."
    if r.get("rules") and not r.get("reasons"):
        text += " Rule signals that fired: " + ", ".join(words_for(x) for x in r["rules"]) + "."
    evidence = [e for e in r.get("evidence") or [] if e.get("session_id") not in (None, "None")]
    if evidence:
        # sessions flagged by the same risk rules are listed under them once
        groups: dict[tuple[str, ...], list[str]] = {}
        for e in evidence:
            groups.setdefault(tuple(e.get("rules") or ()), []).append(
                f"{human_date(e.get('day'))} ({e['session_id']}): {session_activity(e, rules=False)}".rstrip(": "))
        shown = [(f"{flagged_by(rules)}, " if rules else "") + "; ".join(lines)
                 for rules, lines in groups.items()]
        text += " Evidence: " + "; ".join(shown) + "."
    return text


def brief_scores(results: Sequence[Mapping[str, Any]]) -> str:
    """Several subjects scored by one model, one clause each: the probability, the first reason and its session.

    Subjects whose first reason is the same kind ("no activity at all in the past three months:
    last seen 120 days ago") share one sentence, each with its own detail, so the same words are
    not said five times. A comparison of many reads as a list; the full explanation of one
    (``render_score``) is one question away.
    """
    groups: dict[str, list[str]] = {}
    for r in results:
        subject = str(r.get("order_id") or r.get("user_id"))
        p = r.get("probability")
        reasons = reason_sentences(r)
        # the reason without its brackets (the typical value, the estimate without it)
        reason = re.sub(r" \((?:typical|without this)[^()]*(?:\([^()]*\)[^()]*)*\)", "", reasons[0]) if reasons else ""
        head, _, detail = reason.partition(": ")
        sessions = [e["session_id"] for e in r.get("evidence") or [] if e.get("session_id") not in (None, "None")]
        cited = f"session {sessions[0]}" if sessions and not re.search(rf"\b{re.escape(subject)}-s\d+", reason) else ""
        inner = "; ".join(x for x in (detail, cited) if x)
        groups.setdefault(head, []).append(f"{subject} {pct(p) if isinstance(p, (int, float)) else 'unscored'}" + (f" ({inner})" if inner else ""))
    sentences = []
    for head, who in groups.items():
        listed = who[0] if len(who) == 1 else ", ".join(who[:-1]) + " and " + who[-1]
        sentences.append(f"{listed}: {head}." if head else f"{listed}.")
    return " ".join(sentences)


def score_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A score needs its probability and subject; "why" its top factor; "what will they buy" the likeliest category."""
    facts = need_number(r.get("probability"), "probability")
    subject = r.get("order_id") or r.get("user_id")
    if subject and str(subject).lower() not in question.lower():  # "will u00042 churn?" → "73% likely" is clear
        facts += need_id(subject, "subject")
    nexts = r.get("next_categories") or []
    if nexts and _WHAT_BUY.search(question):
        facts += need_id(nexts[0].get("category"), "next category")
    reasons = reason_sentences(r)
    if _WHY.search(question) and reasons:  # "why" is answered by the first reason, in words
        first = reasons[0]
        facts.append(KeyFact(f"the first reason ({first})", lambda a: mentions(a, first)))
    return facts

