"""Honest limits: questions no tool answers get what cannot be answered yet and the nearest questions that can.

Never an answer to a different question: a question about forecasts, marketing channels or
model accuracy is recognised by its wording and answered with a fixed text
(:data:`LIMITS`, filled into ``prompts/limit.md``), no tool called, no LLM involved. The router
also falls back to the general limit when its classifier is unsure (:data:`LOW_CONFIDENCE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """What cannot be answered yet, and questions near it that can (as examples to copy)."""

    key: str
    wording: re.Pattern[str]
    cannot: str
    nearest: tuple[str, ...]


LIMITS: tuple[Limit, ...] = (
    Limit(
        "forecasts",
        re.compile(r"\bforecast\w*|\bproject(?:ion|ed)s?\b|\bpredict (?:the |our |next )?(?:revenue|sales|demand|orders)"
                   r"|\bnext (?:quarter|year|month)'?s? (?:revenue|sales|orders)", re.I),
        "I can't forecast revenue or sales",
        ("revenue and conversion of a segment so far (\"revenue from Audio since March\")",
         "which users are most likely to buy soon"),
    ),
    Limit(
        "marketing attribution",
        re.compile(r"\bwhich (?:marketing |email |ad )?campaigns?\b|\bcampaigns? (?:drove|drive|performed|performance|results?|roi)\b"
                   r"|\bby (?:campaign|channel)\b|\b(?:acquisition|marketing|sales|traffic) channels?\b|\butm\b|\battribution\b"
                   r"|\bad spend\b|\breferr(?:er|al) source", re.I),
        "The shop's data has no marketing campaign or acquisition channel, so I can't attribute sales to one",
        ("conversion rate on mobile since March (segments by device, country or category)",
         "top users by purchase intent"),
    ),
    Limit(
        "model quality",
        re.compile(r"\bhow (?:accurate|good|reliable|well)\b.{0,30}\bmodels?\b|\bmodels?'?s? (?:accuracy|precision|recall|performance|auc)"
                   r"|\b(?:roc[- ]?)?auc\b", re.I),
        "I can't report model accuracy in chat yet (`shopsight models` prints each model's test metrics beside its baselines)",
        ("why is [user id] likely to churn? (each score comes with its reasons)", "top users by churn risk"),
    ),
    Limit(
        "time of day and weekday",
        re.compile(r"\b(?:which|what)\s+(?:day\s+of\s+(?:the\s+)?week|weekdays?|time\s+of\s+(?:the\s+)?day|hours?\s+of\s+(?:the\s+)?day)\b"
                   r"|\b(?:by|per|each|across)\s+(?:weekday|day\s+of\s+(?:the\s+)?week|hour(?:\s+of\s+(?:the\s+)?day)?|time\s+of\s+day)\b"
                   r"|\b(?:busiest|peak|quietest)\s+(?:hours?|weekdays?|day\s+of\s+(?:the\s+)?week|time)\b"
                   r"|\b(?:mondays?|tuesdays?|wednesdays?|thursdays?|fridays?|saturdays?|sundays?|weekends?)\s+(?:vs\.?|versus|or|compared)\b", re.I),
        "I can't split the shop's activity by weekday or hour of the day yet: my time splits are by day, week and month",
        ("daily orders over the last 4 weeks", "weekly conversion rate since March"),
    ),
    Limit(
        "new and repeat buyers",
        re.compile(r"\b(?:repeat|returning|first[- ]time|one[- ]time|new)\s+(?:vs\.?\s+(?:repeat|returning)\s+)?(?:buyers?|customers?|shoppers?|purchasers?)\b"
                   r"(?=.{0,40}\b(?:revenue|sales|orders?|share|spend|spent|aov|order\s+value|how\s+much|vs\.?|versus|compared)\b)"
                   r"|\b(?:revenue|sales|orders?|share|spend|aov|order\s+value)\b.{0,40}\b(?:repeat|returning|first[- ]time|one[- ]time)\s+(?:buyers?|customers?|shoppers?|purchasers?)\b",
                   re.I),
        "I can't split revenue or orders between first-time and repeat buyers yet",
        ("retention of the January cohort (who came back and bought again)", "revenue by country since March"),
    ),
    Limit(
        "code",
        re.compile(r"\b(?:write|give|generate|show)\b.{0,20}\b(?:sql|query|code|script|python)\b|\bsql\b", re.I),
        "I don't write or run SQL or code: I answer with fixed, read-only analyses of the shop's data",
        ("conversion rate of mobile users since March", "the users most likely to churn"),
    ),
)

GENERAL = Limit(
    "unsure", re.compile(r"$^"), "I'm not sure which of my analyses answers that",
    ("why is [user id] likely to churn?", "the users with the highest fraud risk", "conversion rate of mobile users since March"),
)
# Below this classifier confidence, with no user or order named, the router gives the general limit
# rather than its best guess (a confident answer to a different question is worse than "not yet").
LOW_CONFIDENCE = 0.35


# Limits that a named user or order lifts (none today: group, rate, trend, cohort and score-count
# questions are answered by query_metric; a limit for them would stand in its way).
GROUP_LIMITS: frozenset[str] = frozenset()


def limit_for(question: str, *, names_a_subject: bool = False) -> Limit | None:
    """The first limit whose wording the question uses, if any."""
    return next((lim for lim in LIMITS if lim.wording.search(question)
                 and not (names_a_subject and lim.key in GROUP_LIMITS)), None)


def limit_text(limit: Limit) -> str:
    """The fixed answer for a limit: what cannot be answered yet, then the nearest questions that can."""
    from shopsight.prompts import load_prompt

    nearest = "; ".join(f'"{q}"' if not q.startswith('"') else q for q in limit.nearest)
    return load_prompt("limit", cannot=limit.cannot, nearest=nearest).text
