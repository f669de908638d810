"""Explanations checked against the truth: does the first reason name the mechanism the synthetic shop used?

The demo shop (``behavior.synthetic``) knows why each account is fraudulent (``fraud_type`` in
``labels/users``) and when each customer dropped out (``dropout_ts``). Over the test window of
a trained demo workspace this measures how often ``explain()``'s FIRST reason names that
mechanism, per type and overall.

What counts as naming a mechanism is written down in ``MECHANISMS``: the reason keys (rule
names, glossary group names, feature names) that say it, and the reason must raise the score.

Churn. The generator records only ``dropout_ts``; how a customer lapses is the same for all
of them (``synthetic._shop_sessions``: in the ``fade_days`` before dropout sessions get rarer
and shorter and purchases fewer, then nothing). The fade length is not recorded, so the
mechanism is derived from what is: a churner whose dropout came before the explanation's
as-of time has gone silent (``churn_gone``); one whose dropout falls inside the horizon after
it is still fading (``churn_fading``). Both are named by inactivity, an overdue or missing
purchase, or falling activity. Churners are the churn model's test snapshot (users active in
the 90 days before its test cutoff C, explained with the events before C) whose dropout
came before C + horizon, as in the card's ground-truth metrics; fraud-only accounts are left
out (their "dropout" is the end of an attack, not a lapse).

Fraud. The risk model's test accounts (first seen at or after its cutoff, explained with all
their events, as its card's test metrics are); the training accounts are reported apart,
marked as seen in training.

Run it with ``python bench/mechanisms.py`` (table + ``bench/results/mechanisms.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from shopsight.behavior.models.reasons import ORDERINGS, Ordering, order_reasons


@dataclass(frozen=True)
class Mechanism:
    """One ground-truth mechanism and the reasons that name it.

    Attributes:
        what: what the generator did (``behavior/synthetic.py``).
        keys: reason keys that name it: fired rules, glossary groups, single features.
    """

    what: str
    keys: frozenset[str]


MECHANISMS: dict[str, Mechanism] = {
    "card_testing": Mechanism(
        "bursts of 8-30 tiny orders within minutes, a different card each",
        frozenset({"card_testing_burst", "tiny_orders", "velocity", "order_bursts"})),
    "account_takeover": Mechanism(
        "a login from a new device and country, then a fast high-value electronics order",
        frozenset({"new_device_high_value", "new_device_orders", "login_share"})),
    "promo_abuse": Mechanism(
        "rings of new accounts sharing an IP, device type and country, each buying with a promo within days of sign-up",
        frozenset({"linked_accounts", "shared_identity", "hours_signup_to_first_order"})),
    "return_fraud": Mechanism(
        "most purchases refunded within days",
        frozenset({"refund_rate", "refunds", "refunds_90d"})),
    "bot": Mechanism(
        "sessions of 40-160 views about a second apart",
        frozenset({"bot_velocity", "session_speed"})),
    "churn_gone": Mechanism(
        "dropped out before the as-of time: activity faded, then stopped",
        frozenset({"activity", "activity_dropping", "purchase_timing", "no_purchase_within_horizon", "overdue_vs_usual_gap",
                   "trend_30_vs_prev60"})),
    "churn_fading": Mechanism(
        "drops out within the horizon: sessions rarer and shorter, purchases fewer",
        frozenset({"activity", "activity_dropping", "purchase_timing", "no_purchase_within_horizon", "overdue_vs_usual_gap",
                   "trend_30_vs_prev60"})),
}
FRAUD_MECHANISMS = ("account_takeover", "card_testing", "promo_abuse", "return_fraud", "bot")
CHURN_MECHANISMS = ("churn_gone", "churn_fading")


def names_mechanism(reason: Mapping[str, Any], mechanism: str) -> bool:
    """Whether ``reason`` names ``mechanism``: one of its keys, raising the score."""
    return reason.get("direction") == "raises" and str(reason.get("key")) in MECHANISMS[mechanism].keys


def first_reason_names(explanation: Mapping[str, Any], mechanism: str, ordering: Ordering | None = None) -> bool:
    """Whether the explanation's first reason (under ``ordering``; default: as explain ordered them) names ``mechanism``."""
    reasons = list(explanation.get("reasons") or [])
    if ordering is not None:
        reasons = order_reasons(reasons, float(explanation["probability"]), ordering, threshold=explanation.get("threshold"))
    return bool(reasons) and names_mechanism(reasons[0], mechanism)


def named_in_top(explanation: Mapping[str, Any], mechanism: str, k: int = 3) -> bool:
    """Whether any of the first ``k`` reasons names ``mechanism``."""
    return any(names_mechanism(r, mechanism) for r in list(explanation.get("reasons") or [])[:k])


@dataclass
class Case:
    """One explained user with the mechanism the generator used."""

    user_id: str
    mechanism: str
    split: str  # "test" or "train" (risk: the account was seen in training)
    explanation: dict[str, Any] = field(repr=False)


def churn_truth(labels: pd.DataFrame, users: Iterable[str], asof: pd.Timestamp, horizon_days: int) -> dict[str, str]:
    """The churners among ``users`` and how each lapsed: ``churn_gone`` (dropout before ``asof``) or ``churn_fading``.

    A churner drops out before ``asof`` + horizon (the card's ground-truth definition); fraud-only
    accounts (segment ``fraud_account``) are left out.
    """
    lab = labels.assign(user_id=labels["user_id"].astype(str)).set_index("user_id")
    end = asof + pd.Timedelta(days=horizon_days)
    out: dict[str, str] = {}
    for u in users:
        u = str(u)
        if u not in lab.index or str(lab.at[u, "segment"]) == "fraud_account":
            continue
        drop = lab.at[u, "dropout_ts"]
        if pd.isna(drop) or drop >= end:
            continue
        out[u] = "churn_gone" if drop < asof else "churn_fading"
    return out


def fraud_truth(labels: pd.DataFrame, users: Iterable[str]) -> dict[str, str]:
    """The fraud accounts among ``users`` and their ``fraud_type``."""
    lab = labels.assign(user_id=labels["user_id"].astype(str)).set_index("user_id")
    wanted = lab.index.intersection(pd.Index([str(u) for u in users]))
    frauds = lab.loc[wanted]
    frauds = frauds[frauds["is_fraud"].astype(bool)]
    return {str(u): str(t) for u, t in frauds["fraud_type"].items()}


def churn_cases(churn: Any, card: Mapping[str, Any], events: pd.DataFrame, labels: pd.DataFrame,
                *, limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> list[Case]:
    """The churn model's test-window churners, each explained as of its test cutoff."""
    from shopsight.behavior.models.churn import population

    C = pd.Timestamp(card["data_window"]["test_cutoff"])
    before = events[events["ts"] < C]
    users = population(events, C, churn.active_days)
    truth = churn_truth(labels, users, C, churn.horizon_days)
    picked = sorted(truth)[:limit] if limit else sorted(truth)
    cases = []
    for i, u in enumerate(picked):
        cases.append(Case(u, truth[u], "test", churn.explain(before, u)))
        if progress:
            progress(i + 1, len(picked))
    return cases


def fraud_cases(risk: Any, card: Mapping[str, Any], events: pd.DataFrame, labels: pd.DataFrame,
                *, progress: Callable[[int, int], None] | None = None) -> list[Case]:
    """The risk model's fraud accounts, test (first seen at or after its cutoff) and training ones, explained on all events."""
    C = pd.Timestamp(card["data_window"]["test_cutoff"])
    train, test = risk.account_split(events, C)
    todo = [(u, t, "test") for u, t in sorted(fraud_truth(labels, test).items())]
    todo += [(u, t, "train") for u, t in sorted(fraud_truth(labels, train).items())]
    cases = []
    for i, (u, t, split) in enumerate(todo):
        cases.append(Case(u, t, split, risk.explain(events, u)))
        if progress:
            progress(i + 1, len(todo))
    return cases


def score_cases(cases: Sequence[Case], *, ordering: Ordering | None = None) -> list[dict[str, Any]]:
    """Per mechanism and split: n, how many first reasons name it (and in the top 3), how many the model flagged."""
    rows = []
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.mechanism, c.split), []).append(c)
    order = {m: i for i, m in enumerate(FRAUD_MECHANISMS + CHURN_MECHANISMS)}
    for (mech, split), group in sorted(groups.items(), key=lambda kv: (kv[0][1] != "test", order.get(kv[0][0], 99), kv[0][0])):
        hits = sum(first_reason_names(c.explanation, mech, ordering) for c in group)
        top3 = sum(named_in_top(c.explanation, mech) for c in group)
        flagged = sum(float(c.explanation["probability"]) >= float(c.explanation["threshold"]) for c in group)
        rows.append({"type": mech, "split": split, "n": len(group), "first_reason_names_it": hits, "rate": round(hits / len(group), 3),
                     "named_in_top_3": top3, "flagged": flagged})
    return rows


def totals(rows: Sequence[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """Pooled and per-type-averaged rates over the rows of ``split`` (frauds, churn, all)."""
    out: dict[str, Any] = {}
    for label, mechs in (("fraud", FRAUD_MECHANISMS), ("churn", CHURN_MECHANISMS), ("overall", FRAUD_MECHANISMS + CHURN_MECHANISMS)):
        chosen = [r for r in rows if r["split"] == split and r["type"] in mechs]
        n = sum(r["n"] for r in chosen)
        hits = sum(r["first_reason_names_it"] for r in chosen)
        out[label] = {"n": n, "first_reason_names_it": hits, "rate": round(hits / n, 3) if n else None,
                      "mean_of_type_rates": round(sum(r["rate"] for r in chosen) / len(chosen), 3) if chosen else None}
    return out


def misses(cases: Sequence[Case], k: int = 25) -> list[dict[str, Any]]:
    """Test cases whose first reason does not name the mechanism: what it said instead (for error analysis)."""
    out = []
    for c in cases:
        if c.split != "test" or first_reason_names(c.explanation, c.mechanism):
            continue
        first = (c.explanation.get("reasons") or [{}])[0]
        out.append({"user_id": c.user_id, "type": c.mechanism, "probability": c.explanation["probability"],
                    "threshold": c.explanation["threshold"], "first_key": first.get("key"), "direction": first.get("direction"),
                    "sentence": first.get("sentence")})
    return out[:k]


def measure(ws: Any, *, churn_limit: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """The whole measure on a trained demo workspace: per type and overall, under each ordering, with misses.

    Args:
        ws: a workspace with the demo shop's ``labels/users`` and trained churn and risk models.
        churn_limit: explain at most this many churners (sorted by id); None: all.
        progress: optional ``progress(stage, done, total)``.
    """
    from shopsight.behavior.models import load_model
    from shopsight.behavior.models.registry import CARD, model_dir

    if "users" not in ws.label_names():
        raise ValueError(f"{ws.root} has no labels/users: the mechanism eval needs the demo shop's ground truth (`shopsight demo`)")
    events, labels = ws.load_events(), ws.load_labels("users")
    churn, risk = load_model(ws, "churn"), load_model(ws, "risk")
    churn_card, risk_card = (json.loads((model_dir(ws, m.name, m.version_) / CARD).read_text()) for m in (churn, risk))
    report = (lambda stage: (lambda done, total: progress(stage, done, total))) if progress else (lambda stage: None)
    cases = fraud_cases(risk, risk_card, events, labels, progress=report("risk"))
    cases += churn_cases(churn, churn_card, events, labels, limit=churn_limit, progress=report("churn"))
    by_ordering = {}
    for how in ORDERINGS:
        rows = score_cases(cases, ordering=how)
        by_ordering[how] = {"by_type": rows, "test": totals(rows), "train": totals(rows, "train")}
    rows = score_cases(cases)
    return {
        "workspace": str(ws.root),
        "models": {"churn": churn.label, "risk": risk.label},
        "ordering": {"churn": churn.reason_ordering, "risk": risk.reason_ordering},
        "typical_values": {"churn": bool(churn.typical_), "risk": bool(risk.typical_)},
        "mapping": {m: {"what": v.what, "keys": sorted(v.keys)} for m, v in MECHANISMS.items()},
        "by_type": rows,
        "test": totals(rows),
        "train": totals(rows, "train"),
        "orderings": by_ordering,
        "misses": misses(cases),
    }
