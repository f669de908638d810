"""What the three score tools share: one model's explanation cut to what an answer needs, and its text.

Not a tool module (it defines no ``TOOL``): ``predict_intent``, ``predict_churn`` and
``score_risk`` each declare themselves in their own file and call these helpers.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from behavior.workspace import WorkspaceError
from tools.context import ToolContext, day, mask_text, no_such_user, num, unavailable
from tools.registry import KeyFact, need_id, need_number

MAX_FACTORS = 3
MAX_EVIDENCE = 3
WHAT = {"intent": "purchase-intent", "churn": "churn", "risk": "fraud-risk"}

_WHY = re.compile(r"\b(why|explain\w*|reasons?|factors?|driv\w*|how come|because|caus\w*|behind)\b", re.I)
_WHAT_BUY = re.compile(r"\bwhat\b.{0,40}\b(?:buy|purchase|order|want|interested)|\bwhich\s+(?:categor|product|item)", re.I)


def compact_explanation(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A model's explain() dict cut to what an answer needs, numbers rounded, texts masked."""
    out: dict[str, Any] = {"model": str(raw.get("model", "")), "user_id": raw.get("user_id")}
    if raw.get("order_id") is not None:
        out["order_id"] = str(raw["order_id"])
    out["probability"] = num(raw.get("probability"), 3)
    if raw.get("score") is not None:
        out["score"] = num(raw.get("score"), 3)
    factors = []
    for f in list(raw.get("factors") or [])[:MAX_FACTORS]:
        value = f.get("value")
        factors.append({
            "name": str(f.get("name")),
            "value": num(value, 3) if isinstance(value, (int, float)) else mask_text(str(value)),
            "direction": str(f.get("direction", "")),
        })
    out["factors"] = factors
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
        evidence.append({"session_id": str(e.get("session_id")), "day": day(e.get("ts")), "event": str(e.get("event", "")),
                         "detail": mask_text(str(e.get("detail", "")))})
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


def pct(p: Any) -> str:
    """0.734 → '73.4%'."""
    return f"{float(p) * 100:.1f}%" if isinstance(p, (int, float)) else "unknown"


def _factors(result: Mapping[str, Any]) -> str:
    parts = []
    for f in result.get("factors", []):
        direction = f.get("direction", "")
        parts.append(f"{f['name']} = {f['value']}" + (f" ({direction})" if direction else ""))
    return "; ".join(parts)


def render_score(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """A score with its subject, likely next categories, top factors and rule signals."""
    metric = str(r.get("model") or "").split("@")[0]
    subject = f"order {r['order_id']}" if r.get("order_id") else f"user {r.get('user_id')}"
    text = f"The {WHAT.get(metric, metric)} probability for {subject} is {pct(r.get('probability'))}."
    if r.get("next_categories"):
        cats = ", ".join(f"{c['category']} ({pct(c.get('share'))} of recent interest)" for c in r["next_categories"])
        text += f" Most likely next categories: {cats}."
    if r.get("factors"):
        text += f" Top factors: {_factors(r)}."
    if r.get("rules"):
        text += f" Rule signals: {', '.join(map(str, r['rules']))}."
    return text


def score_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A score needs its probability and subject; "why" its top factor; "what will they buy" the likeliest category."""
    facts = need_number(r.get("probability"), "probability")
    subject = r.get("order_id") or r.get("user_id")
    if subject and str(subject).lower() not in question.lower():  # "will u00042 churn?" → "73% likely" is clear
        facts += need_id(subject, "subject")
    nexts = r.get("next_categories") or []
    if nexts and _WHAT_BUY.search(question):
        facts += need_id(nexts[0].get("category"), "next category")
    factors = r.get("factors") or []
    if _WHY.search(question) and factors and isinstance(factors[0], dict) and factors[0].get("name"):
        name = str(factors[0]["name"])
        facts.append(KeyFact(f"top factor {name}", lambda a: name.lower() in a.lower() or name.replace("_", " ").lower() in a.lower()))
    return facts
