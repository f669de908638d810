"""Reasons as sentences: a prediction's factors and fired rules merged, measured and ordered for an answer.

``explain()`` already lists raw factors (single-feature ablation to the training mean) and
every rule's verdict. Reasons are what an answer says: correlated features merged into one
(``Glossary.groups``), a fired rule speaking for the features that carry it, each with its
effect measured by setting its features to the population's typical values (``without``),
the most telling first.

Why typical values rather than the training mean: "no product views (active customers
typically have 14); without this, the estimate would be about 61%" must mean "had they viewed
14", and a feature at its typical value must not come out as a reason.

Effects are compared as changes in log-odds rather than in probability: near 0 or 1 every
probability change is tiny (a 99.6% churner's factors each moved it by less than 0.03), while
the log-odds still separate what matters. Which reasons come first is each model's
``reason_ordering``, picked by measurement: ``evals/mechanisms.py`` scores every ordering in
``ORDERINGS`` against the synthetic shop's ground truth (on the 5,000-user demo: churn's
first reason named the lapse for 90% of test churners ordered by ``verdict``, 84% by
``logit``; risk's named the fraud type for 86% of test frauds and 89% of training frauds by
``logit``, 71% / 76% by ``verdict``, which puts an unflagged fraud's lowering reasons first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from shopsight.behavior.models.common import SEQUENCE_FACTOR
from shopsight.behavior.models.glossary import (
    Glossary,
    RuleContext,
    Said,
    is_number,
    said,
)

Ordering = Literal["logit", "probability", "rules_first", "verdict"]
ORDERINGS: tuple[Ordering, ...] = ("logit", "probability", "rules_first", "verdict")
MAX_REASONS = 6
MIN_EFFECT = 0.0005  # a factor moving the probability by less than this is no reason (fired rules always are)
SEQUENCE = SEQUENCE_FACTOR


@dataclass
class _Unit:
    """One candidate reason: a group of features (or one), the fired rules that speak for it."""

    key: str
    features: list[str]
    say: Callable[[], Said]
    rules: list[tuple[Mapping[str, Any], Any]] = field(default_factory=list)  # (rule verdict, RuleTerm)
    without: float | None = None


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def effect(probability: float, without: float | None, how: Ordering = "logit") -> float:
    """How much a reason moved the prediction: |log-odds change| (or |probability change|); ∞ when unmeasured."""
    if without is None:
        return math.inf
    if how == "probability":
        return abs(float(probability) - float(without))
    return abs(_logit(probability) - _logit(without))


def order_reasons(
    reasons: Sequence[dict[str, Any]], probability: float, how: Ordering = "logit", *, threshold: float | None = None
) -> list[dict[str, Any]]:
    """``reasons`` most telling first.

    ``logit`` / ``probability``: by ``effect``. ``rules_first``: fired rules first, each part by
    log-odds. ``verdict``: the reasons pushing towards the verdict first (raising ones when
    ``probability`` ≥ ``threshold``, lowering ones otherwise), each part by log-odds; without a
    threshold, as ``logit``. Stable, so equal effects keep their order. Works on explain's
    reason dicts, which is how the mechanism eval compares orderings without explaining twice.
    """
    by_logit = lambda r: -effect(probability, r["without"], "logit")  # noqa: E731
    if how == "rules_first":
        return sorted(reasons, key=lambda r: (r["kind"] != "rule", by_logit(r)))
    if how == "verdict" and threshold is not None:
        towards = "raises" if probability >= threshold else "lowers"
        return sorted(reasons, key=lambda r: (r["direction"] != towards, by_logit(r)))
    return sorted(reasons, key=lambda r: -effect(probability, r["without"], "probability" if how == "probability" else "logit"))


@dataclass
class ReasonPlan:
    """The candidate reasons of one prediction and the rows that measure them (see ``plan_reasons``).

    ``rows[k]`` is the feature row with unit k's features at their typical values; score them
    (in the same pass as anything else about this user, e.g. ``ablation_batch``) and hand the
    probabilities to ``reasons``.
    """

    units: list[_Unit]
    measured: list[_Unit]
    rows: np.ndarray
    glossary: Glossary
    raw: Mapping[str, Any]
    typical: Mapping[str, float]
    context: RuleContext

    def reasons(
        self, probability: float, p_rows: np.ndarray, *, sequence: tuple[int, float] | None = None,
        ordering: Ordering = "logit", threshold: float | None = None, limit: int = MAX_REASONS,
    ) -> list[dict[str, Any]]:
        """The reason dicts, most telling first, given ``p_rows`` (the probabilities of ``rows``).

        Args:
            probability: the prediction itself.
            p_rows: probabilities of ``rows``, in order.
            sequence: (tokens seen, probability with a blank sequence) for the behaviour-sentence reason.
            ordering: how the first reasons are picked (``order_reasons``; the model's ``reason_ordering``).
            threshold: the model's decision threshold (the ``verdict`` ordering reads it).
            limit: reasons kept (fired rules are always kept).
        """
        p = float(probability)
        for u, pu in zip(self.measured, p_rows):
            u.without = float(pu)
        # order on the effects alone, then word only the reasons kept (fired rules read the events)
        candidates: list[dict[str, Any]] = []
        for u in self.units:
            if not u.rules and (u.without is None or abs(p - u.without) < MIN_EFFECT):
                continue
            direction = "raises" if u.without is None or p >= u.without else "lowers"
            candidates.append({"kind": "rule" if u.rules else "factor", "direction": direction, "without": u.without, "unit": u})
        if sequence is not None:
            tokens, p_blank = sequence
            if abs(p - p_blank) >= MIN_EFFECT:
                candidates.append({"kind": "factor", "direction": "raises" if p >= p_blank else "lowers", "without": float(p_blank),
                                   "unit": None, "tokens": int(tokens)})
        ordered = order_reasons(candidates, p, ordering, threshold=threshold)
        out = []
        for i, c in enumerate(ordered):
            if i >= limit and c["kind"] != "rule":
                continue
            u = c["unit"]
            if u is None:
                reason = {"kind": "factor", "key": SEQUENCE, "sentence": self.glossary.term(SEQUENCE).say(float(c["tokens"]), self.raw),
                          "features": [SEQUENCE], "value": c["tokens"], "typical": None, "session_id": None, "day": None}
            elif u.rules:
                reason = _rule_reason(u, self.context, self.typical, self.glossary)
            else:
                reason = _factor_reason(u)
            out.append(_shape({**reason, "direction": c["direction"], "without": c["without"]}))
        return out


def plan_reasons(
    *,
    glossary: Glossary,
    names: Sequence[str],
    raw: Mapping[str, Any],
    x: np.ndarray,
    baseline: np.ndarray,
    typical: Mapping[str, float],
    rules: Sequence[Mapping[str, Any]] = (),
    context: RuleContext | None = None,
) -> ReasonPlan:
    """The candidate reasons of one prediction: the glossary's groups, the other features one by one, the fired rules.

    A feature belongs to one unit: the first group listing it, else its own. A fired rule
    speaks for the unit holding its ``RuleTerm.feature`` (its reason then says what fired, when
    and where, and covers the unit's features); two rules on one unit share one reason.

    Args:
        glossary: the model's words (terms, groups, rules).
        names: the model's tabular features, aligned with ``x``.
        raw: the unscaled value of each feature (and any other the sentences read).
        x: the scaled feature row.
        baseline: the scaled row of typical values (the training mean, 0, where none is known).
        typical: the population's typical value per feature (may be empty: an older card).
        rules: explain's rule verdicts; the fired ones become reasons.
        context: the user's events (and orders) for when and where a rule fired.
    """
    pop = glossary.population
    index = {n: i for i, n in enumerate(names)}
    units: list[_Unit] = []
    owner: dict[str, _Unit] = {}
    for g in glossary.groups:
        members = [f for f in g.features if f in index and f not in owner]
        if members:
            lead = max(members, key=lambda f: abs(float(x[index[f]]) - float(baseline[index[f]])))  # first of the ties
            unit = _Unit(g.name, members, lambda g=g, lead=lead: (
                g.say(raw, typical, pop, lead) if g.say else said(glossary.term(lead), raw, typical, pop, lead)))
            units.append(unit)
            owner.update({f: unit for f in members})
    for n in names:
        if n not in owner:
            unit = _Unit(n, [n], lambda n=n: said(glossary.term(n), raw, typical, pop, n))
            units.append(unit)
            owner[n] = unit
    for r in rules:
        if not r.get("fired"):
            continue
        term = glossary.rules.get(str(r["name"]))
        if term is None:
            raise KeyError(f"no glossary entry for rule '{r['name']}': add a RuleTerm beside the rule")
        unit = owner.get(term.feature) if term.feature else None
        if unit is None:
            unit = _Unit(str(r["name"]), [], lambda: Said("", None, None))
            units.append(unit)
        unit.rules.append((r, term))
    measured = [u for u in units if u.features]
    rows = np.repeat(np.asarray(x, dtype="float32")[None, :], len(measured), axis=0)
    for k, u in enumerate(measured):
        cols = [index[f] for f in u.features]
        rows[k, cols] = baseline[cols]
    return ReasonPlan(units, measured, rows, glossary, raw, typical, context or RuleContext(events=None))  # type: ignore[arg-type]


def build_reasons(
    *,
    score: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    sequence: tuple[int, float] | None = None,
    ordering: Ordering = "logit",
    threshold: float | None = None,
    limit: int = MAX_REASONS,
    **plan: Any,
) -> list[dict[str, Any]]:
    """``plan_reasons`` and ``ReasonPlan.reasons`` in one call, scoring the row and the plan's rows in one pass.

    ``score`` maps scaled rows [k, n] to probabilities; ``plan`` are ``plan_reasons``' other arguments.
    """
    made = plan_reasons(x=x, **plan)
    p_all = score(np.concatenate([np.asarray(x, dtype="float32")[None, :], made.rows]))
    return made.reasons(float(p_all[0]), p_all[1:], sequence=sequence, ordering=ordering, threshold=threshold, limit=limit)


def _round(v: Any) -> float | int | None:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    return round(float(v), 4) if is_number(v) else None


def _factor_reason(u: _Unit) -> dict[str, Any]:
    words = u.say()
    return {"kind": "factor", "key": u.key, "sentence": words.sentence, "features": list(u.features),
            "value": words.value, "typical": words.typical, "session_id": None, "day": None}


def _rule_reason(u: _Unit, ctx: RuleContext, typical: Mapping[str, float], glossary: Glossary) -> dict[str, Any]:
    """A unit some fired rule speaks for: the rules' fragments, where and when the first one fired."""
    said_all = [term.say(r, ctx) for r, term in u.rules]
    first = next((w for w in said_all if w.where), said_all[0])
    lead, term0 = u.rules[0]
    fragments = [w.fragment for w in said_all]
    t = typical.get(term0.typical_of) if term0.typical_of else None
    if is_number(t) and float(t) != 0:  # "typical: 0" beside a rule's count says nothing
        # beside the lead rule's own words: "has never bought anything (typical for …: 1 purchase day)"
        fragments[0] += glossary.term(term0.typical_of).typical_clause(float(t), glossary.population)
    sentence = "; ".join(fragments) + (f", {first.where}" if first.where else "")
    return {"kind": "rule", "key": str(lead["name"]), "sentence": sentence, "features": list(u.features),
            "value": lead.get("value"), "typical": t, "session_id": first.session_id, "day": first.day}


def _shape(r: dict[str, Any]) -> dict[str, Any]:
    """The contract's keys in order, numbers rounded to 4 places as in ``factors``."""
    out = {k: r.get(k) for k in ("kind", "key", "sentence", "direction", "features", "value", "typical", "without", "session_id", "day")}
    for k in ("value", "typical", "without"):
        out[k] = _round(out[k])
    return out
