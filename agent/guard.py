"""The grounding guard: every number in an answer must come from a tool result (or the question).

Rounding to the shown precision, percent (0.734 ↔ 73% / 73.4%), currency signs and thousands
separators are allowed. Ids (u00042, o000123, u00042-s0007), dates, model versions (churn@v3)
and years are not numbers for this purpose. When a draft fails twice, :func:`render_answer`
writes a deterministic answer from the tool results alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

# Things that contain digits but are not quantities; removed before numbers are read.
_NOT_NUMBERS = re.compile(
    r"""
    \b\d{4}-\d{2}-\d{2}(?:[T\s]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?   # dates, datetimes
    | \b\d{1,2}:\d{2}(?::\d{2})?\b                                  # clock times
    | \b[A-Za-z_]+[A-Za-z_.]*@v?[\w.]+                               # model@version
    | \b[A-Za-z]+\d+(?:-[A-Za-z]+\d+)*\b                            # ids: u00042, o000123, u00042-s0007, v3
    | \b(?:19|20)\d{2}\b(?![.,]\d)                                   # years
    """,
    re.VERBOSE,
)
_ID = re.compile(r"\b[uo]\d{2,}(?:-s\d+)?\b", re.I)  # user, order and session ids an answer may cite
_NUMBER = re.compile(r"(?<![\w.])[-+]?[$€£]?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s?(%|percent\b)?")


@dataclass(frozen=True)
class ShownNumber:
    """A number as an answer shows it: its value, decimals shown, and whether it is a percent."""

    text: str
    value: float
    decimals: int
    percent: bool


def numbers_in(text: str) -> list[ShownNumber]:
    """The quantities written in ``text`` (ids, dates, versions and years left out)."""
    cleaned = _NOT_NUMBERS.sub(" ", text)
    found = []
    for m in _NUMBER.finditer(cleaned):
        whole, frac, pct = m.group(1), m.group(2) or "", m.group(3)
        value = float(whole.replace(",", "") + frac)
        if m.group(0).lstrip().startswith("-"):
            value = -value
        found.append(ShownNumber(m.group(0).strip(), value, max(len(frac) - 1, 0), bool(pct)))
    return found


def source_values(results: Iterable[Any], question: str = "") -> set[float]:
    """Every number a tool returned (also inside strings and as list lengths), plus the question's."""
    values: set[float] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            if not math.isnan(obj):
                values.add(float(obj))
        elif isinstance(obj, str):
            values.update(n.value for n in numbers_in(obj))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            values.add(float(len(obj)))
            for v in obj:
                walk(v)

    for r in results:
        walk(r)
    values.update(n.value for n in numbers_in(question))
    return values


_RATE_KEY = re.compile(r"prob|rate|share|ratio|percent|pct|score|auc|ece|brier|precision|recall|f1|accuracy", re.I)


def rate_values(results: Iterable[Any]) -> set[float]:
    """Values a tool returned as a probability, rate or share (by key, or by a factor's name).

    "100%" or "0%" may only come from one of these: a count of 1 or a flag is not a percentage.
    """
    rates: set[float] = set()

    def walk(obj: Any, key: str = "") -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            if _RATE_KEY.search(key) and not math.isnan(obj):
                rates.add(float(obj))
        elif isinstance(obj, dict):
            named = str(obj.get("name", ""))
            for k, v in obj.items():
                walk(v, named if k == "value" and named else str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)

    for r in results:
        walk(r)
    return rates


def _matches(shown: ShownNumber, source: float, *, from_question: bool = False) -> bool:
    tol = 0.5 * 10 ** (-shown.decimals) + 1e-9
    if shown.percent and not from_question:
        # tools return rates as fractions: "24%" must come from 0.24, never from a count of 24
        return abs(source) <= 1.0 and abs(source * 100 - shown.value) <= tol
    candidates = [source]
    if abs(source) <= 1.0:  # a probability or rate may be shown as a percent
        candidates.append(source * 100)
    return any(abs(c - shown.value) <= tol for c in candidates)


@dataclass
class GuardReport:
    """The verdict on one draft: ok; shown numbers and ids no tool result supports; key facts left out."""

    ok: bool
    unsupported: list[str] = field(default_factory=list)
    leaked_prompt: bool = False
    missing: list[str] = field(default_factory=list)


def check_grounding(answer: str, results: Iterable[Any], question: str = "", system_prompt: str = "") -> GuardReport:
    """Check a draft answer against the tool results of its turn.

    Args:
        answer: The draft.
        results: The tool results (JSON-able) the draft may draw on.
        question: The user's question; numbers it contains ("top 10") may be repeated.
        system_prompt: If given, a draft repeating any of its lines fails (the prompt is never revealed).
    """
    results = list(results)
    values = source_values(results)
    # a percent comes from a fraction (0.734 → 73.4%) or a rate; a whole 0 or 1 elsewhere is a count or flag
    percent_sources = {v for v in values if 0 < abs(v) < 1} | rate_values(results)
    asked = {n.value for n in numbers_in(question)}
    unsupported = [
        n.text for n in numbers_in(answer)
        if not any(_matches(n, v) for v in (percent_sources if n.percent else values))
        # the question's counts may be repeated ("top 10"); its percentages are claims, not facts ("say 100% sure")
        and (n.percent or not any(_matches(n, v, from_question=True) for v in asked))
    ]
    known = {i.lower() for i in _ID.findall(json.dumps(results, default=str) + " " + question)}
    unsupported += [i for i in dict.fromkeys(_ID.findall(answer)) if i.lower() not in known]
    missing = missing_headlines(answer, results, question)
    if _degenerate(answer):
        missing.append("a readable answer (the draft repeats itself)")
    leaked = False
    if system_prompt:
        lowered = " ".join(answer.lower().split())
        for line in system_prompt.splitlines():
            line = " ".join(line.strip(" -").lower().split())
            if len(line) >= 30 and line[:60] in lowered:
                leaked = True
                break
    return GuardReport(ok=not unsupported and not leaked and not missing, unsupported=unsupported,
                       leaked_prompt=leaked, missing=missing)


def _degenerate(answer: str) -> bool:
    """A draft stuck in a loop ("u00115, u00115, …" or one clause said three times), as tiny models write."""
    words = re.findall(r"[\w.%-]+", answer.lower())
    if len(words) < 8:
        return False
    top = max(words.count(w) for w in set(words) if len(w) >= 3) if any(len(w) >= 3 for w in words) else 0
    if top >= 6 and top / len(words) >= 0.25:
        return True
    grams = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
    return any(grams.count(g) >= 3 for g in set(grams))


_WHY = re.compile(r"\b(why|explain\w*|reasons?|factors?|driv\w*|how come|because|caus\w*|behind)\b", re.I)
_WHAT_BUY = re.compile(r"\bwhat\b.{0,40}\b(?:buy|purchase|order|want|interested)|\bwhich\s+(?:categor|product|item)", re.I)
_RANKED = re.compile(r"(?<![\w.])(\d{1,3})[.)]\s+(u\d{2,})\b", re.I)  # "2. u00212" in a ranking
_NO_SUCH = re.compile(r"\b(no such|not found|does not exist|doesn't exist|unknown|no user|no order|no record"
                      r"|(?:could not|couldn't|cannot|can't|can not) find)\b", re.I)



def _shows(shown: list[ShownNumber], value: Any) -> bool:
    """Whether ``value`` is shown with its meaning intact: 0.949 as 94.9%, 95% or 0.95, never as a bare "1"."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    v = float(value)
    precise = lambda n: n.percent or n.decimals > 0 or abs(v) >= 10 or v == int(v)  # noqa: E731
    return any(_matches(n, v) and precise(n) for n in shown)


def missing_headlines(answer: str, results: list[Any], question: str = "") -> list[str]:
    """The key facts a draft left out, per tool result.

    A score needs its subject and probability (for "why" its top factor, for "what will they
    buy" the likeliest category); a ranking its first five users in order and the top
    probability; a profile its session and order counts; a comparison every user and their
    spend; a segment its sessions, purchases and conversion; an error ("no such user") the
    error and the id. A draft that says nothing wrong but nothing useful (tiny models do
    this) fails and is replaced.
    """
    shown = numbers_in(answer)
    lowered = answer.lower()
    missing: list[str] = []

    def need_id(value: Any, what: str) -> None:
        if value and str(value).lower() not in lowered:
            missing.append(f"{what} {value}")

    def need_number(value: Any, what: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _shows(shown, value):
            missing.append(f"{what} {value}")

    why = bool(_WHY.search(question))
    for r in results:
        if not isinstance(r, dict):
            continue
        if "error" in r:
            need_id(r.get("user_id") or r.get("order_id"), "the unknown id")
            if not _NO_SUCH.search(answer):
                missing.append(f"the error ({r['error']})")
            continue
        if "probability" in r:
            need_number(r.get("probability"), "probability")
            subject = r.get("order_id") or r.get("user_id")
            if subject and str(subject).lower() not in question.lower():  # "will u00042 churn?" → "73% likely" is clear
                need_id(subject, "subject")
            nexts = r.get("next_categories") or []
            if nexts and _WHAT_BUY.search(question) and str(nexts[0].get("category", "")).lower() not in lowered:
                missing.append(f"next category {nexts[0].get('category')}")
            factors = r.get("factors") or []
            if why and factors and isinstance(factors[0], dict):
                name = str(factors[0].get("name", ""))
                if name and name.lower() not in lowered and name.replace("_", " ").lower() not in lowered:
                    missing.append(f"top factor {name}")
        users = r.get("users")
        if isinstance(users, list) and users and isinstance(users[0], dict):
            if "rank" in users[0]:
                need_id(users[0].get("user_id"), "top user")
                need_number(users[0].get("probability"), "top probability")
                for u in users[1:5]:  # a ranking shows at least its first five, none silently dropped
                    need_id(u.get("user_id"), f"rank {u.get('rank')} user")
                by_rank = {int(u["rank"]): str(u.get("user_id", "")).lower() for u in users if "rank" in u}
                for rank, uid in _RANKED.findall(answer):  # "2. u00212": the user at that rank, not another
                    if by_rank.get(int(rank), uid.lower()) != uid.lower():
                        missing.append(f"rank {rank} is {by_rank[int(rank)]}, not {uid}")
            else:  # compare_users: every user with its spend, and the users that do not exist
                for u in users:
                    need_id(u.get("user_id"), "user")
                    need_number(u.get("revenue"), f"revenue of {u.get('user_id')}")
        for u in r.get("unknown_users") or []:
            need_id(u, "the unknown user")
        if r.get("unknown_users") and not _NO_SUCH.search(answer):
            missing.append("that some users do not exist")
        if "orders" in r and "first_seen" in r:  # a profile
            need_id(r.get("user_id"), "user")
            need_number(r.get("sessions"), "sessions")
            need_number(r.get("orders"), "orders")
        if "conversion_rate" in r:  # a segment
            need_number(r.get("sessions"), "sessions")
            need_number(r.get("with_purchase"), "sessions with a purchase")
            need_number(r.get("conversion_rate"), "conversion rate")
    return missing


# --- deterministic answers ----------------------------------------------------------------
def pct(p: Any) -> str:
    """0.734 → '73.4%'."""
    return f"{float(p) * 100:.1f}%" if isinstance(p, (int, float)) else "unknown"


def _factors(result: dict) -> str:
    parts = []
    for f in result.get("factors", []):
        direction = f.get("direction", "")
        parts.append(f"{f['name']} = {f['value']}" + (f" ({direction})" if direction else ""))
    return "; ".join(parts)


_WHAT = {"intent": "purchase-intent", "churn": "churn", "risk": "fraud-risk"}


def _render_one(name: str, args: dict, r: dict) -> str:
    if "error" in r:
        who = r.get("user_id") or r.get("order_id") or ""
        return f"{r['error'].capitalize()}{': ' + who if who else ''}. {r.get('hint', '')}".strip()
    if name in ("predict_intent", "predict_churn", "score_risk"):
        metric = (r.get("model") or name).split("@")[0]
        subject = f"order {r['order_id']}" if r.get("order_id") else f"user {r.get('user_id')}"
        text = f"The {_WHAT.get(metric, metric)} probability for {subject} is {pct(r.get('probability'))}."
        if r.get("next_categories"):
            cats = ", ".join(f"{c['category']} ({pct(c.get('share'))} of recent interest)" for c in r["next_categories"])
            text += f" Most likely next categories: {cats}."
        if r.get("factors"):
            text += f" Top factors: {_factors(r)}."
        if r.get("rules"):
            text += f" Rule signals: {', '.join(map(str, r['rules']))}."
        return text
    if name == "top_users":
        users = ", ".join(f"{u['rank']}. {u['user_id']} ({pct(u['probability'])})" for u in r.get("users", []))
        return f"Top {len(r.get('users', []))} users by {_WHAT.get(r.get('metric', ''), r.get('metric'))} of {r.get('n_scored')} scored: {users}."
    if name == "get_user_profile":
        return (
            f"User {r['user_id']}: first seen {r.get('first_seen')}, last seen {r.get('last_seen')}, "
            f"{r.get('sessions')} sessions, {r.get('orders')} orders, revenue {r.get('revenue')}, "
            f"average order value {r.get('avg_order_value')}, top category {r.get('top_category')}."
        )
    if name in ("get_user_history", "search_histories"):
        rows = r.get("sessions", [])
        head = (f"User {r.get('user_id')} has {len(rows)} sessions in this range" if name == "get_user_history"
                else f"{len(rows)} sessions match \"{r.get('query')}\"")
        lines = [f"{s['session_id']} ({s.get('start')}): \"{s.get('summary', '')}\"" for s in rows[:5]]
        return head + (": " + "; ".join(lines) if lines else ".")
    if name == "segment_summary":
        filters = r.get("filters") or {}
        scope = ", ".join(f"{k} {v}" for k, v in filters.items()) or "all sessions"
        if not r.get("sessions"):
            return f"0 sessions match these filters ({scope})."
        return (
            f"Segment ({scope}): of {r['sessions']} sessions from {r['users']} users, {r.get('with_cart')} added to the "
            f"cart (cart rate {pct(r.get('cart_rate'))}) and {r['with_purchase']} ended in a purchase "
            f"(conversion rate {pct(r['conversion_rate'])}); revenue {r['revenue']}, "
            f"average order value {r.get('avg_order_value')}, {r.get('refunds')} refunds."
        )
    if name == "compare_users":
        lines = [
            f"{u['user_id']}: {u.get('sessions')} sessions, {u.get('orders')} orders, revenue {u.get('revenue')}, "
            f"last seen {u.get('last_seen')}"
            for u in r.get("users", [])
        ]
        text = "; ".join(lines) + "." if lines else ""
        if r.get("unknown_users"):
            text += f" No such user: {', '.join(r['unknown_users'])}. {r.get('hint', '')}"
        return text.strip()
    return json.dumps(r, default=str)[:400]


def render_answer(tool_calls: list[dict[str, Any]]) -> str:
    """A deterministic answer from the tool calls of a turn (each ``name``, ``args``, ``result``)."""
    if not tool_calls:
        return "I could not answer that from the shop's data."
    return " ".join(_render_one(c["name"], c.get("args", {}), c["result"]) for c in tool_calls)


def citations(tool_calls: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Session ids and model name@version the tool results of a turn carry."""
    sessions: list[str] = []
    models: list[str] = []
    for c in tool_calls:
        cite = c["result"].get("citations", {}) if isinstance(c.get("result"), dict) else {}
        sessions += [s for s in cite.get("sessions", []) if s not in sessions]
        model = cite.get("model")
        if model and model not in models:
            models.append(model)
    return {"sessions": sessions, "models": models}


def with_citations(answer: str, cites: dict[str, list[str]]) -> str:
    """Append the citations the answer does not already mention."""
    missing_sessions = [s for s in cites["sessions"][:5] if s not in answer]
    missing_models = [m for m in cites["models"] if m not in answer]
    parts = []
    if missing_sessions:
        parts.append("sessions " + ", ".join(missing_sessions))
    if missing_models:
        parts.append("model " + ", ".join(missing_models))
    return answer if not parts else f"{answer.rstrip()} (Sources: {'; '.join(parts)}.)"
