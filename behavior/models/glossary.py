"""How the models' features and rule signals are said in words: the glossary's types, number wording, typical values.

Each entry lives beside the code that defines the feature or rule it describes (``rules.py``
for the rules, ``risk.py`` for the account features, ``intent.py`` for the recent-activity and
session features, ``common.py`` for the behaviour sentence); a model's glossary is the merge of
the parts its features come from (``Glossary.merge``). The RFM entries are here because
``rfm_features`` lives in ``behavior/features.py``, outside the models package: they describe
that function and should move beside it.

Why words need rules of their own: an answer's numbers are checked against the tool result
(the grounding guard), so a sentence states only its reason's ``value`` and ``typical`` (or a
fired rule's value, threshold and detail) and simple roundings of them. Time windows are said
in words ("the past month" for 30 days) for the same reason: a 30 in a sentence would be a
number no field carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

Kind = Literal["count", "days", "hours", "money", "fraction", "flag", "ratio", "rate", "number", "clock", "sequence"]
Row = Mapping[str, Any]

# The windows of ``rfm_features`` (and intent's 7-day extras) in words.
WINDOW_WORDS: dict[int, str] = {7: "the past week", 14: "the past two weeks", 30: "the past month", 60: "the past two months", 90: "the past three months"}

MEDIAN_NOTE = "median over the training population; the mean for shares and yes/no flags (a flag's mean is the share of the population)"


# --- numbers in words ---------------------------------------------------------------------


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool, not None, not NaN)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def show_count(v: float) -> str:
    """A count as written: 1,234 (a fractional count keeps one decimal: 2.5)."""
    v = float(v)
    return f"{v:,.0f}" if abs(v - round(v)) < 0.05 else f"{v:,.1f}"


def show_days(v: float) -> str:
    """Days with the precision a reader needs: "119 days", "2.3 days", "1 day"."""
    v = float(v)
    text = f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return f"{text} day" if text == "1" else f"{text} days"


def show_hours(v: float) -> str:
    """Hours: "3.5 hours", "120 hours"."""
    v = float(v)
    text = f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return f"{text} hour" if text == "1" else f"{text} hours"


def show_money(v: float) -> str:
    """An amount in the shop's currency (the events carry none): 1,234.50."""
    return f"{float(v):,.2f}"


def show_percent(v: float) -> str:
    """A share 0..1 as a percent: 84%, 0.5% (small shares keep a decimal)."""
    pct = float(v) * 100
    return f"{pct:.1f}%" if 0 < abs(pct) < 10 and abs(pct - round(pct)) >= 0.05 else f"{pct:.0f}%"


def show_ratio(v: float) -> str:
    """A ratio: 4.2."""
    return f"{float(v):.1f}"


def show_number(v: float) -> str:
    """Any other number: two significant decimals at most."""
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}".rstrip("0").rstrip(".")


def plural(n: float, one: str, many: str) -> str:
    """``one`` for a count that shows as 1, else ``many``."""
    return one if show_count(n) == "1" else many


def day_of(ts: Any) -> tuple[str, str] | None:
    """(``"2 Apr"``, ``"2026-04-02"``) of a timestamp: the sentence's date and the reason's ``day``."""
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return None
    t = pd.Timestamp(ts)
    return f"{t.day} {t:%b}", t.strftime("%Y-%m-%d")


def where(ts: Any, session_id: Any, lead: str = "on") -> tuple[str | None, str | None, str | None]:
    """("on 2 Apr (session u1-s2)", session id, ISO day) of a fired rule's event; Nones where unknown."""
    when = day_of(ts)
    sid = None if session_id is None or (not isinstance(session_id, str) and pd.isna(session_id)) else str(session_id)
    if when is None:
        return None, sid, None
    return f"{lead} {when[0]}" + (f" (session {sid})" if sid else ""), sid, when[1]


SHOW: dict[str, Callable[[float], str]] = {
    "count": show_count, "days": show_days, "hours": show_hours, "money": show_money, "fraction": show_percent,
    "flag": show_percent, "ratio": show_ratio, "rate": show_ratio, "number": show_number, "sequence": show_count,
    "clock": lambda v: f"{int(v) % 24:02d}:00",
}


# --- entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One feature in words.

    Attributes:
        phrase: what the feature is, with its unit ("product views in the past month").
        reading: how to read a value ("0 = no views; active customers typically have a dozen").
        kind: the unit family; sets how numbers are shown and which typical value is kept
            (the median; the mean for ``fraction`` and ``flag``, read as a share).
        say: the sentence fragment for a value (the raw feature row is passed too, for
            wording that depends on another feature, e.g. "never carted" when the days since
            the last cart exceed the tenure). Must state only the value (rounded).
    """

    phrase: str
    reading: str
    kind: Kind
    say: Callable[[float | None, Row], str]
    sentinel: float | None = None  # a value meaning "none" (-1: no order yet), left out of the typical value
    noun: tuple[str, str] | None = None  # a count's noun (one, many): "14 product views" in the typical clause

    @property
    def statistic(self) -> Literal["median", "mean"]:
        """Which typical value describes this feature's population."""
        return "mean" if self.kind in ("fraction", "flag") else "median"

    def show(self, v: float) -> str:
        """A value with its unit, as a sentence shows it ("14 product views", "3.5 days", "12%")."""
        if self.noun is not None:
            return f"{show_count(v)} {plural(v, *self.noun)}"
        return SHOW[self.kind](v)

    def typical_clause(self, typical: float | None, population: str) -> str:
        """" (typical for active customers: 14)" — or "" without a typical value."""
        if not is_number(typical):
            return ""
        if self.kind == "flag":
            return f" (true for {show_percent(typical)} of {population})"
        return f" (typical for {population}: {self.show(typical)})"


@dataclass(frozen=True)
class Said:
    """A reason's words: the sentence and the one number it states (``value``) beside the population's (``typical``)."""

    sentence: str
    value: float | None
    typical: float | None


GroupSay = Callable[[Row, Mapping[str, float], str, str], Said]


@dataclass(frozen=True)
class Group:
    """Correlated features that say one thing, merged into one reason ("no activity in the past three months").

    Attributes:
        name: the reason's ``key`` when no rule speaks for the group.
        features: the member features (those a model lacks are ignored).
        meaning: what the group says, for the glossary.
        say: the sentence from the raw row, the typical values, the population's name and the
            lead member (the one furthest from its typical value, in the model's scaled units:
            what moves the group's effect most). None: the lead member's own sentence.
    """

    name: str
    features: tuple[str, ...]
    meaning: str
    say: GroupSay | None = None


@dataclass(frozen=True)
class RuleContext:
    """What a rule's sentence may look up: the user's own events (and orders, when the model built them)."""

    events: pd.DataFrame
    orders: pd.DataFrame | None = None


@dataclass(frozen=True)
class RuleSaid:
    """A fired rule in words: what fired (``fragment``), where and when as a trailing phrase
    (``where``: "on 2 Apr (session u04495-s0002)"), and the same as data (session id, ISO day)."""

    fragment: str
    where: str | None = None
    session_id: str | None = None
    day: str | None = None


@dataclass(frozen=True)
class RuleTerm:
    """One rule signal in words.

    Attributes:
        what: what the rule looks for, for the glossary ("many tiny orders in a short burst").
        fires_when: when it fires, in words.
        feature: the model feature that carries the rule's effect: the rule's reason merges
            with the unit (group or single feature) holding it, and its ``without`` is that
            unit's ablation. None: the rule is not a model input.
        typical_of: the feature whose typical value is the typical of the rule's ``value``
            (the same quantity), or None when no feature measures it.
        say: the fragment for a fired rule's verdict (the ``rules`` dict of explain) in context.
    """

    what: str
    fires_when: str
    feature: str | None
    typical_of: str | None
    say: Callable[[Mapping[str, Any], RuleContext], RuleSaid]


@dataclass(frozen=True)
class Glossary:
    """A model's words: its features' terms, the groups merged into one reason, its rules.

    ``patterns`` name features made per value (``share_<category>``, ``device_<label>``): a
    prefix and a function from the rest of the name to the term.
    """

    terms: Mapping[str, Term] = field(default_factory=dict)
    patterns: Sequence[tuple[str, Callable[[str], Term]]] = ()
    groups: Sequence[Group] = ()
    rules: Mapping[str, RuleTerm] = field(default_factory=dict)
    population: str = "active customers"

    def term(self, name: str) -> Term:
        """The term of feature ``name``; ``KeyError`` naming it when the glossary lacks one."""
        if name in self.terms:
            return self.terms[name]
        for prefix, make in self.patterns:
            if name.startswith(prefix) and len(name) > len(prefix):
                return make(name[len(prefix):])
        raise KeyError(f"no glossary entry for feature '{name}': add a Term beside the code that defines it")

    def has(self, name: str) -> bool:
        """Whether feature ``name`` has a term."""
        try:
            self.term(name)
        except KeyError:
            return False
        return True

    def missing(self, names: Iterable[str]) -> list[str]:
        """The features of ``names`` without a term (what a new feature's author must add)."""
        return [n for n in names if not self.has(n)]

    @staticmethod
    def merge(*parts: "Glossary", population: str = "active customers") -> "Glossary":
        """One glossary from parts (later parts win on a shared name; groups keep their order)."""
        terms: dict[str, Term] = {}
        rules: dict[str, RuleTerm] = {}
        patterns: list[tuple[str, Callable[[str], Term]]] = []
        groups: list[Group] = []
        for p in parts:
            terms.update(p.terms)
            rules.update(p.rules)
            patterns.extend(p.patterns)
            groups.extend(p.groups)
        return Glossary(terms=terms, patterns=tuple(patterns), groups=tuple(groups), rules=rules, population=population)


# --- term factories -----------------------------------------------------------------------


def counted(one: str, many: str, scope: str = "", *, reading: str, none: str | None = None) -> Term:
    """A count: "no product views in the past month", "1 product view …", "14 product views …"."""
    tail = f" {scope}" if scope else ""

    def say(v: float | None, row: Row) -> str:
        if not is_number(v) or round(float(v), 1) == 0:
            return none or f"no {many}{tail}"
        return f"{show_count(v)} {plural(v, one, many)}{tail}"

    return Term(f"{many}{tail}", reading, "count", say, noun=(one, many))


def worded(phrase: str, kind: Kind, template: str, *, reading: str, missing: str = "not known") -> Term:
    """A value shown with its unit inside ``template`` ("{v} since the last purchase")."""

    def say(v: float | None, row: Row) -> str:
        return template.format(v=SHOW[kind](v)) if is_number(v) else missing

    return Term(phrase, reading, kind, say)


def flag(phrase: str, yes: str, no: str, *, reading: str) -> Term:
    """A yes/no feature (1/0)."""
    return Term(phrase, reading, "flag", lambda v, row: yes if is_number(v) and float(v) >= 0.5 else no)


def said(term: Term, row: Row, typical: Mapping[str, float], population: str, name: str) -> Said:
    """A single feature's reason in words: its fragment and, if known, the population's typical value."""
    v = row.get(name)
    v = float(v) if is_number(v) else None
    t = typical.get(name)
    t = float(t) if is_number(t) else None
    return Said(term.say(v, row) + term.typical_clause(t, population), v, t)


def value(row: Row, name: str, default: float = 0.0) -> float:
    """``row[name]`` as a float (``default`` when missing or not finite)."""
    v = row.get(name)
    return float(v) if is_number(v) else default


# --- typical values -----------------------------------------------------------------------


def typical_values(X: pd.DataFrame, glossary: Glossary) -> dict[str, float]:
    """Each column's typical value over the training population ``X``: the median, the mean for shares and flags.

    Why both: a median of a yes/no flag or of a mostly-zero share is 0 and says nothing, while
    "true for 28% of active customers" does. Missing values are ignored; a column with none
    left is omitted. Columns without a glossary term are skipped (the completeness test
    catches those).
    """
    out: dict[str, float] = {}
    for name in X.columns:
        if not glossary.has(name):
            continue
        term = glossary.term(name)
        col = pd.to_numeric(X[name], errors="coerce").to_numpy(dtype="float64")
        col = col[np.isfinite(col) & ((col != term.sentinel) if term.sentinel is not None else True)]
        if not len(col):
            continue
        stat = float(np.mean(col)) if term.statistic == "mean" else float(np.median(col))
        out[str(name)] = round(stat, 4)
    return out


def typical_record(values: Mapping[str, float], population: str, definition: str = "") -> dict[str, Any]:
    """The model card's entry for typical values: who they describe (the word sentences use, and
    its definition), which statistic, the values."""
    return {"population": population, "definition": definition, "statistic": MEDIAN_NOTE, "values": dict(values)}


def typical_from_card(card: Mapping[str, Any], key: str = "typical_values") -> dict[str, float]:
    """The typical values a saved card holds (empty for a card written before they existed)."""
    rec = card.get(key) or {}
    return {str(k): float(v) for k, v in (rec.get("values") or {}).items() if is_number(v)}


# --- the RFM features (behavior.features.rfm_features) -------------------------------------


def _window_terms() -> dict[str, Term]:
    terms: dict[str, Term] = {}
    for w, words in WINDOW_WORDS.items():
        terms[f"buys_{w}d"] = counted("purchase day", "purchase days", f"in {words}", none=f"no purchase in {words}",
                                      reading=f"distinct days with a purchase in {words} ({w} days before the as-of time)")
        terms[f"spend_{w}d"] = worded(f"amount spent in {words}", "money", f"{{v}} spent in {words}",
                                      reading=f"sum of price x quantity of purchases in {words} ({w} days), in the shop's currency")
        terms[f"events_{w}d"] = counted("event", "events", f"in {words}", none=f"no activity in {words}",
                                        reading=f"every logged event (views, searches, carts, purchases …) in {words} ({w} days)")
    return terms


def _days_since_last_event(v: float | None, row: Row) -> str:
    return f"last seen {show_days(v)} ago" if is_number(v) else "never seen"


def _recency(v: float | None, row: Row) -> str:
    if not is_number(v):
        return "no purchase on record"
    if value(row, "has_purchase", 1.0) < 0.5:
        return f"no purchase in the {show_days(v)} since their first visit"
    return f"{show_days(v)} since the last purchase"


def _trend(v: float | None, row: Row) -> str:
    if not is_number(v) or abs(float(v)) < 0.05:
        return "buying at the same pace as in the two months before"
    if float(v) > 0:
        return f"buying more often lately: {show_ratio(v)} more purchase days in the past month than their monthly average of the two months before"
    return f"buying less often lately: a change of {show_ratio(v)} purchase days in the past month against their monthly average of the two months before"


def _share_term(category: str) -> Term:
    return worded(f"share of purchase spend on {category}", "fraction", f"{{v}} of their purchase spend on {category}",
                  reading=f"spend on {category} / all purchase spend (0 when nothing was bought)", missing=f"no spend on {category}")


RFM_TERMS: dict[str, Term] = {
    "days_since_last_event": Term("days since the last event of any kind", "0 = active today; large = gone quiet", "days", _days_since_last_event),
    "tenure_days": worded("days since the first event", "days", "first seen {v} ago", reading="how long the customer has been known"),
    "has_purchase": flag("whether they ever bought", "has bought before", "has never bought anything", reading="1 = at least one purchase on record"),
    "recency_days": Term("days since the last purchase", "days since the last purchase day; for customers who never bought, days since their first visit", "days", _recency),
    "first_purchase_age_days": worded("days since the first purchase", "days", "first purchase {v} ago", reading="0 when they never bought", missing="no first purchase"),
    "frequency": counted("purchase day", "purchase days", "so far", none="has never bought anything",
                         reading="distinct days with a purchase (several orders on one day count once, as in BG/NBD)"),
    "repeat_days": counted("repeat purchase day", "repeat purchase days", "after the first", none="no repeat purchase after the first",
                           reading="purchase days after the first one (frequency − 1): 0 = bought at most once"),
    "monetary": worded("total amount spent", "money", "{v} spent in total", reading="sum of price x quantity of all purchases, in the shop's currency"),
    "avg_day_spend": worded("average spend per purchase day", "money", "{v} spent per purchase day on average", reading="total spend / purchase days (0 when they never bought)"),
    **_window_terms(),
    "gap_mean_days": worded("usual days between purchases", "days", "usually {v} between purchases", reading="mean gap between consecutive purchase days",
                            missing="too few purchases for a usual gap"),
    "gap_std_days": worded("spread of the days between purchases", "days", "gaps between purchases varying by {v}", reading="standard deviation of those gaps: small = regular",
                           missing="too few purchases to judge their regularity"),
    "gap_last_days": worded("days between the last two purchases", "days", "{v} between their last two purchases", reading="the most recent gap",
                            missing="fewer than two purchase days"),
    "recency_over_gap": worded("days since the last purchase / the usual gap", "ratio", "{v} times their usual gap between purchases since the last one",
                               reading="above 1 = later than usual; above 2 = overdue", missing="too few purchases for a usual gap"),
    "trend_30_vs_prev60": Term("purchase days in the past month minus the monthly average of the two months before",
                               "above 0 = buying more often lately, below 0 = less often, 0 = steady", "number", _trend),
    "views_30d": counted("product view", "product views", "in the past month", reading="product page views in the 30 days before the as-of time"),
    "carts_30d": counted("cart add", "cart adds", "in the past month", reading="items added to the cart in the past 30 days"),
    "sessions_30d": counted("session", "sessions", "in the past month", reading="visits (sessions) in the past 30 days"),
    "refunds_90d": counted("refund", "refunds", "in the past three months", reading="refund events in the past 90 days"),
}


def _activity(row: Row, typical: Mapping[str, float], population: str, lead: str) -> Said:
    """No activity for a while: say how long, from the longest silent window; otherwise the lead member."""
    for w in (90, 30, 7):
        if f"events_{w}d" in row and value(row, f"events_{w}d") == 0:
            quiet = said(RFM_TERMS["days_since_last_event"], row, typical, population, "days_since_last_event")
            lead_words = "no activity at all" if w == 90 else "no activity"
            return Said(f"{lead_words} in {WINDOW_WORDS[w]}: {quiet.sentence}", quiet.value, quiet.typical)
    return said(RFM_TERMS[lead], row, typical, population, lead)


def _purchase_history(row: Row, typical: Mapping[str, float], population: str, lead: str) -> Said:
    """Never bought: say so (every member is 0 then); otherwise the lead member."""
    name = "frequency" if value(row, "frequency") == 0 else lead
    return said(RFM_TERMS[name], row, typical, population, name)


RFM_GROUPS: tuple[Group, ...] = (
    Group("activity", ("days_since_last_event", "events_7d", "events_14d", "events_30d", "events_60d", "events_90d", "views_30d", "carts_30d", "sessions_30d"),
          "how active the customer has been lately (visits, views, cart adds, any event)", _activity),
    Group("purchase_timing", ("recency_days", "recency_over_gap", "gap_mean_days", "gap_std_days", "gap_last_days"),
          "how long since the last purchase, against their usual rhythm"),
    Group("purchase_history", ("has_purchase", "frequency", "repeat_days", "first_purchase_age_days", "buys_60d", "buys_90d",
                               "monetary", "avg_day_spend", "spend_60d", "spend_90d"),
          "how often (and how much) they have bought at all: purchase days and spend move together", _purchase_history),
    Group("recent_purchases", ("buys_7d", "buys_14d", "buys_30d", "spend_7d", "spend_14d", "spend_30d"),
          "purchases in the past month"),
)

RFM_GLOSSARY = Glossary(terms=RFM_TERMS, patterns=(("share_", _share_term),), groups=RFM_GROUPS)


def glossary_table(glossary: Glossary, names: Iterable[str]) -> list[dict[str, str]]:
    """The glossary of ``names`` as rows (name, phrase, how to read it): for docs, the CLI or a tool."""
    return [{"name": n, "phrase": glossary.term(n).phrase, "reading": glossary.term(n).reading} for n in names]
