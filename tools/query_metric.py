"""query_metric: rates, counts, trends, funnels and cohorts over the shop, by the typed DuckDB engine.

One registry tool over :class:`behavior.query.QueryEngine`: its parameters are the engine's spec
fields (plus four conveniences the engine leaves to its callers: ``flagged`` populations at a
model card's threshold, a ``cohort`` named by its month, rows to ``focus`` on, and a population
for counts). What the model sees is the engine's result without the SQL, bounded to what fits
its context; the SQL stays in the result under ``sql`` (hidden from models, see
:data:`tools.registry.HIDDEN_KEYS`) for readers of ``shopsight ask --json``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Mapping, Sequence

import pandas as pd

from shopsight.behavior.query import (
    METRICS,
    GroupBy,
    Metric,
    MetricQueryError,
    MetricResult,
    MetricRow,
    ModelName,
    ScoreFilter,
    Step,
)
from shopsight.behavior.workspace import Workspace, WorkspaceError
from shopsight.tools.context import ToolContext, unavailable
from shopsight.tools.metric_slots import (DEFAULT_SCORE_LINE, MEASURE_OVER_PERIOD, MONEY_MEASURE, MONTH_NAMES, OF_RANKED, RETENTION_MEASURE, THAN_GROUP,
                                           UP_OR_DOWN, metric_args)
from shopsight.tools.registry import (
    MAX_RESULT_CHARS,
    ConversationState,
    KeyFact,
    Route,
    ToolSpec,
    need_id,
    need_number,
)
from shopsight.tools.words import pct

VALUE_COLUMNS = ("category", "device", "country", "payment")
MAX_FOCUS = 5
MAX_CITED_IDS = 10
DEFAULT_FLAG_THRESHOLD = 0.5  # a model whose card states no threshold flags at one half
_WHAT_SCORE = {"risk": "fraud-risk", "churn": "churn", "intent": "purchase-intent"}


def query_metric(
    ctx: ToolContext,
    metric: Metric,
    group_by: GroupBy | None = None,
    since: str | None = None,
    until: str | None = None,
    category: str | list[str] | None = None,
    device: str | list[str] | None = None,
    country: str | list[str] | None = None,
    payment: str | list[str] | None = None,
    purchased: bool | None = None,
    did: list[Step] | None = None,
    did_not: list[Step] | None = None,
    model: ModelName | None = None,
    threshold: float | None = None,
    scores: list[ScoreFilter] | None = None,
    flagged: list[ModelName] | None = None,
    user_ids: list[str] | None = None,
    cohort: str | None = None,
    compare: bool = False,
    sort: Literal["value", "group"] | None = None,
    descending: bool | None = None,
    limit: int | None = None,
    focus: str | list[str] | None = None,
    bands: list[float] | None = None,
    examples: int = 3,
) -> dict[str, Any]:
    """What is the rate, count, trend, funnel or cohort retention of a group of sessions, orders or users?

    Use for shop-wide analytic questions: conversion, cart → purchase, abandonment, refund rate,
    average order value, revenue, how many users/orders/sessions, the funnel, cohort retention,
    and how many (or what share of) users score above a threshold — overall, by a dimension
    ("by device", "which category has the highest…"), over time ("weekly", "by month"), or
    against the previous period (compare). Not for one user (use the per-user tools) nor for a
    ranking of users by score (use top_users). ALWAYS state the numerator and the denominator
    ("40.5% of carted sessions: 10,662 of 26,299"), the period, and the model version for scores.

    Which metric answers which question: session_conversion "what share of sessions buy";
    cart_to_purchase "of sessions that added to the cart, how many bought"; cart_abandonment the
    opposite; refund_rate "share of orders refunded"; avg_order_value "AOV"; revenue; users /
    orders / sessions "how many"; funnel "view → cart → checkout → purchase"; retention "do
    cohorts come back" (group_by cohort_month or cohort_week); score_mean, score_share_above,
    score_count_above "average / share / number of users with a churn, risk (fraud) or intent
    score at or above a threshold".

    Args:
        metric: What to compute (see above).
        group_by: One grouping: category, device, country, payment, day, week, month,
            cohort_week, cohort_month, score_band (needs model); none gives one number.
        since: Only sessions starting on or after this day (YYYY-MM-DD); for retention, cohorts first seen from this day.
        until: Only sessions starting on or before this whole day (YYYY-MM-DD).
        category: Only these product categories (one value or a list).
        device: Only these devices, e.g. "mobile".
        country: Only these country codes, e.g. "DE".
        payment: Only orders (or users) paid with these methods, e.g. "paypal"; card brands as "visa".
        purchased: True: only sessions/users that purchased; False: only those that did not.
        did: Funnel steps every counted session/user reached: view, cart, checkout, purchase, refund.
        did_not: Steps no counted session/user reached, e.g. ["checkout"] for "never checked out".
        model: The score a score_* metric reads (or score_band groups): churn, risk (fraud) or intent.
        threshold: score_share_above / score_count_above: at or above this probability, in [0, 1] (default 0.5).
        scores: Keep users by score, e.g. [{"model": "churn", "min": 0.5}] for users likely to churn.
        flagged: Keep users these models flag at the threshold on their model card (["risk"]: high-risk users).
        user_ids: Only these users (e.g. a previous ranking).
        cohort: A retention cohort by its month ("january", "2026-01") or week (its Monday, YYYY-MM-DD).
        compare: Also compute the window of equal length just before since (needs since).
        sort: Order rows by "value" or by "group" (default: group for time, cohort and band groups).
        descending: Default descending by value ("highest first"); false for "lowest".
        limit: Rows to return, 1-20 (default 10; for day, week, month and cohort groups 20, the latest ones).
        focus: Group values to lead with, e.g. "paypal" for "what share of users pay with PayPal" (by payment).
        bands: score_band edges in [0, 1], e.g. [0, 0.5, 0.8, 1] (default: deciles).
        examples: Example ids per row, 0-20.
    """
    engine = ctx.query_engine()
    try:
        facts = engine.describe()
    except WorkspaceError as exc:
        return unavailable("shop metrics", exc)
    periods = group_by in ("day", "week", "month", "cohort_week", "cohort_month")
    latest = group_by in ("day", "week", "month") and sort is None and descending is None
    if limit is None:
        limit = 20 if periods or metric == "retention" else 10
    given = {
        "metric": metric, "group_by": group_by, "since": since, "until": until, "category": category, "device": device,
        "country": country, "payment": payment, "purchased": purchased, "did": did, "did_not": did_not, "model": model,
        "threshold": threshold, "scores": scores, "user_ids": user_ids, "compare": compare, "sort": sort,
        "descending": True if latest else descending, "limit": limit, "bands": bands, "examples": examples,
    }
    try:
        spec, definitions, focused = _spec(ctx.workspace, facts, given, flagged=flagged, cohort=cohort, focus=focus)
        result = engine.run(spec)
        population = _population(engine, spec)
    except MetricQueryError as exc:
        return _error(exc)
    except WorkspaceError as exc:
        return unavailable("shop metrics", exc)
    # a trend keeps its latest periods when there are more than `limit`: asked newest first, shown oldest first
    return _view(result, definitions=definitions, focus=focused, limit=limit, population=population, oldest_first=latest)


# --- from the arguments to the engine's spec -------------------------------------------------
def _spec(ws: Workspace, facts: Mapping[str, Any], given: Mapping[str, Any], *, flagged: Sequence[str] | None,
          cohort: str | None, focus: str | list[str] | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """The engine's spec, the definitions an answer must state, and the resolved focus values.

    Filter values are matched to the workspace's own ("Laptop" → "Laptops", "apple pay" →
    "apple_pay"); a value the data never shows is an error listing the ones it does, so a
    question about a category the shop lacks gets a clarifying answer, not a zero.

    Raises:
        MetricQueryError: a value, a flagged model or a cohort the workspace cannot answer.
    """
    spec = {k: v for k, v in given.items() if v is not None and v != [] and not (k == "compare" and v is False)}
    values: Mapping[str, list[str]] = facts.get("values") or {}
    for column in VALUE_COLUMNS:
        if column in spec:
            spec[column] = [_known_value(column, v, values.get(column)) for v in _as_list(spec[column])]
    definitions: list[str] = []
    for sf in spec.get("scores") or []:
        definitions.append(_score_definition(sf["model"], sf.get("min"), sf.get("max"), facts))
    for name in dict.fromkeys(flagged or []):
        line, source = _card_threshold(ws, name, facts)
        who = {"risk": "high-risk", "churn": "likely to churn", "intent": "likely to buy"}[name]
        definitions.append(f"{who} means a {_WHAT_SCORE[name]} score at or above {line:g} ({source})")
        if spec["metric"] in ("score_share_above", "score_count_above") and spec.get("model") == name and "threshold" not in spec:
            spec["threshold"] = line  # "how many high-risk users": the count at the card's line
        else:
            spec.setdefault("scores", []).append({"model": name, "min": line})
    if cohort:
        if spec["metric"] != "retention":
            raise MetricQueryError(f"cohort picks retention cohorts, not {spec['metric']}: for other metrics group_by cohort_month",
                                   field="cohort")
        if spec.get("since") or spec.get("until"):
            raise MetricQueryError("give cohort or since/until, not both: cohort sets the range of first-seen days", field="cohort")
        spec["since"], spec["until"], spec["group_by"] = _cohort_range(cohort, facts)  # a week's cohort is a weekly one
    focused: list[str] = []
    if focus:
        column = spec.get("group_by")
        if column not in VALUE_COLUMNS:
            raise MetricQueryError(f"focus picks rows of a category, device, country or payment grouping, not {column or 'no grouping'}",
                                   field="focus", allowed=list(VALUE_COLUMNS))
        focused = [_known_value(column, v, values.get(column)) for v in _as_list(focus)][:MAX_FOCUS]
        spec["limit"] = 20  # every group, so the focused ones are there; cut to `limit` afterwards
    return spec, definitions, focused


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if str(v).strip()]


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(text).casefold())


def _known_value(column: str, value: str, known: list[str] | None) -> str:
    """The workspace's spelling of ``value`` (case, spaces, underscores and a plural s aside).

    Raises:
        MetricQueryError: the value does not occur in the workspace (the message lists those that do).
    """
    if known is None:
        return value  # no such column: the engine says so, naming the filter to drop
    wanted = _key(value)
    for k in known:
        if _key(k) in (wanted, wanted + "s", wanted + "es") or _key(k) + "s" == wanted:
            return k
    shown = ", ".join(_human(k) for k in known[:25]) + (f" … ({len(known)} in all)" if len(known) > 25 else "")
    one, many = _DIMENSION[column]
    raise MetricQueryError(
        f"unknown {one} '{value}': this workspace has no such {one}; the {many} it records are: {shown}",
        field=column, allowed=list(known),
    )


def _card_threshold(ws: Workspace, name: str, facts: Mapping[str, Any]) -> tuple[float, str]:
    """The threshold on the latest ``name`` model's card, and where it came from (0.5 when the card has none)."""
    from shopsight.behavior.models.registry import CARD, latest_version

    version = latest_version(ws, name)
    if version is None or name not in (facts.get("models") or {}):
        raise MetricQueryError(f"no {name} scores in this workspace: train it with `shopsight train {name}`",
                               field="flagged", allowed=list(facts.get("models") or {}))
    try:
        card = json.loads((ws.models_dir / name / version / CARD).read_text())
    except (OSError, json.JSONDecodeError):
        card = {}
    value = card.get("threshold", (card.get("metrics") or {}).get("threshold"))
    if isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0:
        return round(float(value), 4), f"the threshold on the {name}@{version} model card"
    return DEFAULT_FLAG_THRESHOLD, f"the {name}@{version} model card states no threshold, so {DEFAULT_FLAG_THRESHOLD:g} is used"


def _score_definition(model: str, lo: float | None, hi: float | None, facts: Mapping[str, Any]) -> str:
    cite = (facts.get("models") or {}).get(model, model)
    if lo == DEFAULT_SCORE_LINE and hi is None and model in ("churn", "intent"):
        who = "likely to churn" if model == "churn" else "likely to buy"
        return f"{who} means a {_WHAT_SCORE[model]} probability at or above {lo:g} ({cite})"
    bounds = " and ".join(b for b in (f"at or above {lo:g}" if lo is not None else "", f"at or below {hi:g}" if hi is not None else "") if b)
    return f"users with a {_WHAT_SCORE[model]} score {bounds} ({cite})"


def _cohort_range(cohort: str, facts: Mapping[str, Any]) -> tuple[str, str, str]:
    """(since, until, group) of a cohort: a month by name (the latest one in the data) or YYYY-MM, or a week's Monday."""
    text = cohort.strip().lower()
    last = pd.Timestamp(facts.get("data_last") or pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d"))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        start = pd.Timestamp(text)
        if start.day_of_week != 0:
            raise MetricQueryError(f"cohort week '{cohort}' is not a Monday: weekly cohorts start on Mondays", field="cohort")
        return text, (start + pd.Timedelta(days=6)).strftime("%Y-%m-%d"), "cohort_week"
    if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
        start = pd.Timestamp(year=int(m.group(1)), month=int(m.group(2)), day=1)
    else:
        m = re.fullmatch(r"([a-z]+)\.?(?:\s+(\d{4}))?", text)
        month = next((i for i, name in enumerate(MONTH_NAMES, 1) if m and len(m.group(1)) >= 3 and name.startswith(m.group(1))), None)
        if month is None:
            raise MetricQueryError(f"cohort '{cohort}' is not a month or a week: say e.g. 'january', '2026-01' or a Monday YYYY-MM-DD",
                                   field="cohort")
        year = int(m.group(2)) if m.group(2) else (last.year if month <= last.month else last.year - 1)
        start = pd.Timestamp(year=year, month=month, day=1)
    end = start + pd.offsets.MonthEnd(0)
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d"), "cohort_month"


def _population(engine: Any, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """For a count of users or sessions narrowed by steps or scores: how many there were before narrowing.

    "1,234 users bought something" needs "of 3,456 with a session then" to be read; it is the
    same query without the step (else the score) filters, counted by the same engine.
    """
    if spec["metric"] not in ("users", "sessions") or spec.get("group_by") or spec.get("compare"):
        return None
    wider = {k: v for k, v in spec.items() if k not in ("did", "did_not", "purchased", "examples")}
    dropped = "steps"
    if wider.keys() == {k for k in spec if k != "examples"}:
        if not spec.get("scores"):
            return None
        wider.pop("scores")
        dropped = "scores"
    base = engine.run({**wider, "examples": 0})
    return {"units": base.total.value, "without": dropped}


def _error(exc: MetricQueryError) -> dict[str, Any]:
    out = exc.to_dict()
    # read by the model that called (to retry) and, in the deterministic answer, by the analyst
    out["hint"] = "Ask again with one of the values listed." if exc.allowed else "Ask again with that changed."
    return out


# --- what the model sees: the engine's result, bounded ----------------------------------------
def _sizes(change: float | None, relative: float | None) -> dict[str, Any]:
    """A change's size without its sign, and relative to where it started (a fraction): an answer says
    "down 33, or 21.0%", and the guard finds 33 and 0.21 among the results only if they are there."""
    out: dict[str, Any] = {}
    if change is not None:
        out["change_size"] = round(abs(change), 6)
    if relative is not None:
        out["relative_size"] = round(abs(relative), 6)
    return out


def _row(r: MetricRow, metric: str) -> dict[str, Any]:
    out: dict[str, Any] = {"group": r.group, "value": r.value}
    if r.value in (0, 1) and _is_rate(metric):
        out["rate"] = r.value  # a whole 0 or 1 reads as a count to the guard; under a rate's key "0.0%" is grounded
    for key in ("numerator", "denominator"):
        if getattr(r, key) is not None:
            out[key] = getattr(r, key)
    if metric == "revenue":
        out["units"] = r.units  # the orders the revenue is from ("… from 185 orders")
    if r.share is not None:
        out["share"] = round(r.share, 6)
    if r.steps:
        out["steps"] = [{"step": s.step, "sessions": s.sessions, "rate_from_previous": s.rate_from_previous} for s in r.steps]
    if r.periods:
        out["periods"] = [{"period": c.period, "active": c.active, "rate": c.rate, **({"partial": True} if c.partial else {})}
                          for c in r.periods]
    if r.previous is not None:
        out["previous"] = {k: v for k, v in r.previous.model_dump().items() if v is not None and k != "units"}
        out["previous"] |= _sizes(r.previous.change, r.previous.change_pct / 100 if r.previous.change_pct is not None else None)
    if r.examples:
        out["examples"] = list(r.examples)
    return out


def _view(result: MetricResult, *, definitions: list[str], focus: list[str], limit: int,
          population: dict[str, Any] | None, oldest_first: bool = False) -> dict[str, Any]:
    """The tool's result: the engine's numbers and citations (rows that fit the model's context), the SQL hidden."""
    rows = [_row(r, result.metric) for r in result.rows]
    sorted_by = result.sorted_by
    if oldest_first:
        rows, sorted_by = rows[::-1], "group ascending (the latest periods)"
    if focus:
        # a group with no units has no row: for a count it is a true zero, said as one
        have = {str(r["group"]).casefold() for r in rows}
        rows += [{"group": f, "value": 0, "share": 0.0} for f in focus if f.casefold() not in have]
        wanted = {f.casefold() for f in focus}
        rows = [r for r in rows if str(r["group"]).casefold() in wanted] + [r for r in rows if str(r["group"]).casefold() not in wanted]
        rows = rows[: max(limit, len(focus))]
    c = result.citations
    cites: dict[str, Any] = {"since": c.since or c.data_first, "until": c.until or c.data_last,
                             "data_first": c.data_first, "data_last": c.data_last}
    if c.previous_since:
        cites |= {"previous_since": c.previous_since, "previous_until": c.previous_until}
    if c.models:
        cites |= {"model": c.models[0], "models": list(c.models), "scores_asof": dict(c.scores_asof)}
    if c.ids:
        cites[{"session": "sessions", "user": "users", "order": "orders"}.get(c.id_kind, "ids")] = list(c.ids[:MAX_CITED_IDS])
    view: dict[str, Any] = {
        "metric": result.metric, "label": result.label, "unit": result.unit,
        "numerator_label": result.numerator_label, "denominator_label": result.denominator_label,
        "group_by": result.group_by, "total": _row(result.total, result.metric), "rows": rows,
        "groups": result.groups, "sorted_by": sorted_by, "query": result.query,
    }
    if population:
        units = population["units"] or 0
        view["population"] = {**population, "share": round(float(result.total.value or 0) / units, 6) if units else None}
    if result.metric == "score_count_above":  # "45 of 5,000 scored users (0.9%)": the share is a number the answer shows
        for row in view["rows"] + [view["total"]]:
            if row.get("denominator"):
                row["share_of_scored"] = round(float(row.get("value") or 0) / row["denominator"], 6)
    if focus:
        view["focus"] = focus
    if definitions:
        view["definitions"] = definitions
    if result.notes:
        view["notes"] = list(result.notes)
    view["citations"] = cites
    if result.group_by in ("day", "week", "month") and rows:
        view["partial"] = sorted(partial_periods(view))
        view |= _trend(result.metric, [r for r in rows if r["group"] not in view["partial"] and r.get("value") is not None])
    _fit(view)
    view["sql"] = {"text": result.sql, "params": result.params}
    return view


def _trend(metric: str, whole: list[dict[str, Any]]) -> dict[str, Any]:
    """First to last whole period: the change (points for a rate), and the best and worst periods."""
    if len(whole) < 2:
        return {}
    first, last = whole[0], whole[-1]
    change = round(float(last["value"]) - float(first["value"]), 6)
    trend: dict[str, Any] = {"first": first["group"], "last": last["group"], "change": change,
                             **_sizes(change, change / float(first["value"]) if first["value"] else None)}
    if len(whole) >= 3:
        trend["highest"] = max(whole, key=lambda r: r["value"])["group"]
        trend["lowest"] = min(whole, key=lambda r: r["value"])["group"]
    return {"trend": trend}


def _size(view: Mapping[str, Any]) -> int:
    return len(json.dumps(view, ensure_ascii=False, separators=(",", ":"), default=str))


def _fit(view: dict[str, Any]) -> None:
    """Keep the rows that fit MAX_RESULT_CHARS: per-row examples go first, then rows from the end."""
    if _size(view) <= MAX_RESULT_CHARS:
        return
    for r in view["rows"] + [view["total"]]:
        r.pop("examples", None)
    view["rows_shown"] = len(view["rows"])
    while _size(view) > MAX_RESULT_CHARS and len(view["rows"]) > 1:
        view["rows"].pop()
        view["rows_shown"] = len(view["rows"])
        view["truncated"] = True
    if view["rows_shown"] == view["groups"] and not view.get("truncated"):
        view.pop("rows_shown")


# --- the deterministic answer -----------------------------------------------------------------
def _human(text: Any) -> str:
    return str(text).replace("_", " ")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else pct(x)


def _count(n: Any) -> str:
    return f"{int(n or 0):,}"


def _money(v: Any) -> str:
    return f"{float(v or 0):,.2f}"


def _is_rate(metric: str) -> bool:
    """Values shown as percentages (rates, shares, mean probabilities), not counts or money."""
    return metric != "avg_order_value" and (METRICS[metric].kind in ("rate", "funnel", "retention") or metric == "score_mean")


def _value(metric: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if metric in ("avg_order_value", "revenue"):
        return _money(v)
    return _pct(v) if _is_rate(metric) else _count(v)


def _ratio_words(metric: str, row: Mapping[str, Any]) -> str:
    """"61.2% (1,234 of 2,016)", "167.27 (3,197,665.16 over 19,117 orders)", "5,123 (26.8% of the total)"."""
    v = row.get("value")
    if metric == "avg_order_value":
        return f"{_money(v)} ({_money(row.get('numerator'))} over {_count(row.get('denominator'))} orders)"
    if metric == "score_mean":
        n = int(row.get("denominator") or 0)
        return f"{_pct(v)} on average over {_count(n)} scored user{'' if n == 1 else 's'}"
    if metric == "funnel":  # a funnel's row value: from view to purchase
        steps = {s["step"]: s["sessions"] for s in row.get("steps") or []}
        return f"{_pct(v)} ({_count(steps.get('purchase'))} of {_count(steps.get('view'))})"
    if _is_rate(metric) and row.get("denominator") is not None:
        return f"{_pct(v)} ({_count(row.get('numerator'))} of {_count(row.get('denominator'))})"
    if metric == "score_count_above" and row.get("share_of_scored") is not None:
        return f"{_count(v)} of {_count(row.get('denominator'))} ({_pct(row['share_of_scored'])})"
    text = _value(metric, v)
    return text + (f" ({_pct(row['share'])} of the total)" if row.get("share") is not None else "")


def _span(since: str | None, until: str | None) -> str:
    """"in April 2026" for a whole calendar month, else "from 2026-04-01 to 2026-04-20"."""
    if not since or not until:
        return ""
    a, b = pd.Timestamp(since), pd.Timestamp(until)
    if a.day == 1 and b == a + pd.offsets.MonthEnd(0):
        return f"in {a:%B %Y}"
    return f"from {since} to {until}"


def _period(r: Mapping[str, Any]) -> str:
    """The window in words: the one asked for, else all of the data with its first and last day."""
    c, q = r.get("citations") or {}, r.get("query") or {}
    if not (q.get("since") or q.get("until")):
        return f"over all the data ({c.get('data_first')} to {c.get('data_last')})"
    return _span(c.get("since"), c.get("until"))


def _scope(q: Mapping[str, Any]) -> str:
    parts = []
    ids = list(q.get("user_ids") or [])
    if ids:  # "5 orders by u01037 in April 2026"
        parts.append("by " + (" and ".join(ids) if len(ids) <= 3 else f"{len(ids)} chosen users ({', '.join(ids[:3])}, …)"))
    if q.get("category"):
        parts.append("in " + " or ".join(q["category"]))
    if q.get("device"):
        parts.append("on " + " or ".join(q["device"]))
    if q.get("country"):
        parts.append("from " + " or ".join(q["country"]))
    if q.get("payment"):
        parts.append("paid with " + " or ".join(_human(p) for p in q["payment"]))
    return (" " + " ".join(parts)) if parts else ""


_STEP_DONE = {"view": "viewed an item", "cart": "added to the cart", "checkout": "reached checkout", "purchase": "bought something",
              "refund": "had a refund"}
_STEP_NOT = {"view": "never viewed an item", "cart": "never added to the cart", "checkout": "never reached checkout",
             "purchase": "never bought anything", "refund": "had no refund"}


_SESSION_DONE = _STEP_DONE | {"view": "had a view", "purchase": "ended in a purchase"}
_SESSION_NOT = _STEP_NOT | {"view": "had no view", "purchase": "ended without a purchase"}


def _steps_words(q: Mapping[str, Any], *, sessions: bool = False) -> str:
    done, never = (_SESSION_DONE, _SESSION_NOT) if sessions else (_STEP_DONE, _STEP_NOT)
    said = [done[s] for s in q.get("did") or []] + [never[s] for s in q.get("did_not") or []]
    if len(said) <= 1:
        return "".join(said)
    return ", ".join(said[:-1]) + (" but " if q.get("did") and q.get("did_not") else " and ") + said[-1]


def _populations(r: Mapping[str, Any]) -> list[str]:
    """The score populations by name ("high-risk", "likely to churn"), from the definitions the tool wrote."""
    return [d.split(" means ")[0] for d in r.get("definitions") or [] if " means " in d]


def _users_group(r: Mapping[str, Any]) -> str:
    """"high-risk users", "users likely to churn", "users in the score range"; "" when no score narrows the users."""
    if not (r.get("query") or {}).get("scores"):
        return ""
    names = _populations(r)
    return " and ".join(f"{n} users" if n.startswith("high") else f"users {n}" for n in names) if names else "users in the score range"


def _of_users(r: Mapping[str, Any]) -> str:
    """" of users likely to churn" when scores narrow the users, else nothing."""
    group = _users_group(r)
    return f" of {group}" if group else ""


def _definitions(r: Mapping[str, Any]) -> str:
    defs = [d[:1].upper() + d[1:] for d in r.get("definitions") or []]
    return (" " + ". ".join(defs) + ".") if defs else ""


def _score_line(r: Mapping[str, Any]) -> str:
    q = r.get("query") or {}
    return f"a {_WHAT_SCORE.get(q.get('model'), q.get('model'))} score at or above {q.get('threshold', DEFAULT_SCORE_LINE):g}"


def _models(r: Mapping[str, Any]) -> str:
    c = r.get("citations") or {}
    asof = c.get("scores_asof") or {}
    models = c.get("models") or []
    return (" (" + "; ".join(f"{m}, scores as of {asof[m]}" if asof.get(m) else m for m in models) + ")") if models else ""


def _change(metric: str, prev: Mapping[str, Any]) -> str:
    """"up 3.3 points from 70.6%" (rates) or "up 56 (4.8%) from 1,178" (counts and money)."""
    change = prev.get("change")
    if change is None:
        return f"not comparable with the period before ({_value(metric, prev.get('value'))})"
    if not change:
        return f"unchanged from {_value(metric, prev.get('value'))}"
    way, size = ("up" if change > 0 else "down"), prev.get("change_size", abs(change))
    if _is_rate(metric):
        return f"{way} {size * 100:.1f} points from {_pct(prev.get('value'))}"
    amount = _money(size) if metric in ("revenue", "avg_order_value") else _count(size)
    relative = prev.get("relative_size")
    pct = f", or {_pct(relative)}," if relative is not None and relative <= 1 else ""  # "+250%" is not a share: left out
    return f"{way} {amount}{pct} from {_value(metric, prev.get('value'))}"


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """The answer first, numbers with their denominators, groups in order, then what it rests on."""
    metric = str(r.get("metric"))
    if metric == "retention":
        text = _render_retention(r)
    elif r.get("group_by") in ("day", "week", "month"):
        text = _render_trend(r)
    elif r.get("group_by"):
        text = _render_groups(r)
    elif metric == "funnel":
        text = _render_funnel(r)
    else:
        text = _render_total(r)
    text += _definitions(r)
    notes = [n for n in r.get("notes") or [] if " is partial:" not in n]
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return text


def _render_total(r: Mapping[str, Any]) -> str:
    metric, t, q = str(r["metric"]), r["total"], r.get("query") or {}
    scope, period, users = _scope(q), _period(r), _of_users(r)
    if t.get("value") is None and metric == "revenue":
        return f"No orders{users}{scope} {period}, so no revenue."
    if t.get("value") is None:
        return f"No {r.get('denominator_label') or r.get('unit')}{users}{scope} match {period}, so the {r.get('label')} is undefined."
    if metric == "avg_order_value":
        text = (f"The average order value{users}{scope} is {_money(t['value'])} — revenue of {_money(t.get('numerator'))} "
                f"over {_count(t.get('denominator'))} orders — {period}.")
    elif metric == "revenue":
        orders = f" from {_count(t['units'])} orders" if t.get("units") is not None else ""  # the query may not count them
        text = f"Revenue{users}{scope} was {_money(t['value'])}{orders} {period}."
    elif metric == "score_mean":
        what = _WHAT_SCORE.get(q.get("model"), q.get("model"))
        text = f"The average {what} probability{users}{scope} is {_pct(t['value'])} over {_count(t.get('denominator'))} scored users{_models(r)}."
    elif metric == "score_count_above":
        share = f" ({_pct(t['share_of_scored'])})" if t.get("share_of_scored") is not None else ""
        text = f"{_count(t['value'])} of {_count(t.get('denominator'))} scored users{users}{scope}{share} have {_score_line(r)}{_models(r)}."
    elif metric == "score_share_above":
        text = (f"{_pct(t['value'])} of scored users{users}{scope} — {_count(t.get('numerator'))} of {_count(t.get('denominator'))} — "
                f"have {_score_line(r)}{_models(r)}.")
    elif METRICS[metric].kind == "rate":
        predicate = {"session_conversion": "ended in a purchase", "cart_to_purchase": "ended in a purchase",
                     "cart_abandonment": "were abandoned without a purchase", "refund_rate": "were refunded"}[metric]
        text = (f"{_pct(t['value'])} of {r.get('denominator_label')}{users}{scope} — {_count(t.get('numerator'))} of "
                f"{_count(t.get('denominator'))} — {predicate}, {period}.")
    else:  # users, sessions, orders
        unit = str(r.get("unit"))
        steps, group = _steps_words(q, sessions=unit == "sessions"), _users_group(r)
        population = r.get("population") or {}
        pop = population.get("units")
        ids = list(q.get("user_ids") or [])
        if unit == "users" and ids:  # the users counted are the ones chosen: "1 of the 10 chosen users (…) bought something"
            scope = _scope({k: v for k, v in q.items() if k != "user_ids"})
            whom = " and ".join(ids) if len(ids) <= 3 else f"the {len(ids)} chosen users ({', '.join(ids[:3])}, …)"
            if pop:
                if pop != len(ids):  # some of them had no session in the scope: the share is of those who had one
                    whom, scope = f"the {_count(pop)} of {whom} with a session{scope}", ""
                names = _populations(r)
                predicate = steps if population.get("without") == "steps" else (f"are {' and '.join(names)}" if names else "are in the score range")
                text = f"{_count(t['value'])} of {whom}{scope} ({_pct(population.get('share'))}) {predicate}, {period}."
            else:
                text = f"{_count(t['value'])} of {whom} had a session{scope} {period}."
        elif pop:
            window = "" if period.startswith("over all") else f" {period}"
            if population.get("without") == "steps":  # the steps narrowed them; a score population stays in the base
                counted = f"{group or 'users'} with a session" if unit == "users" else f"sessions{_of_users(r)}"
                predicate = steps
            else:  # the scores narrowed them
                counted = "users with a session" if unit == "users" else "sessions"
                names = _populations(r)
                predicate = (f"are {' and '.join(names)}" if names else "are in the score range") if unit == "users" else f"are by {group}"
            text = (f"{_count(t['value'])} of the {_count(pop)} {counted}{scope}{window} ({_pct(population.get('share'))}) {predicate}"
                    + (f", {period}." if not window else "."))
        else:
            did = f" {steps}" if steps else (" had a session" if unit == "users" else "")
            text = f"{_count(t['value'])} {unit}{_of_users(r)}{scope}{did} {period}."
    prev = t.get("previous")
    if prev:
        c = r.get("citations") or {}
        before = _span(c.get("previous_since"), c.get("previous_until"))
        counts = (f" ({_count(prev.get('numerator'))} of {_count(prev.get('denominator'))})"
                  if prev.get("denominator") and _is_rate(metric) else "")
        text += f" That is {_change(metric, prev)}{counts} {before}, the period of the same length before."
    if metric == "users" and t.get("examples"):
        text += " For example: " + ", ".join(t["examples"]) + "."
    return text


def _render_funnel(r: Mapping[str, Any]) -> str:
    t, q = r["total"], r.get("query") or {}
    steps = {s["step"]: s["sessions"] for s in t.get("steps") or []}
    if not steps.get("view"):
        return f"No sessions with a view{_scope(q)} {_period(r)}."
    v, c, k, p = (steps[s] for s in ("view", "cart", "checkout", "purchase"))
    rate = lambda a, b: _pct(a / b) if b else "n/a"  # noqa: E731
    return (f"Of {_count(v)} sessions with a view{_of_users(r)}{_scope(q)} {_period(r)}, {_count(c)} ({rate(c, v)}) added to the cart, "
            f"{_count(k)} ({rate(k, c)} of those) reached checkout and {_count(p)} ({rate(p, k)} of those) purchased: "
            f"{rate(p, v)} from view to purchase.")


def _label(r: Mapping[str, Any]) -> str:
    """The metric's name in words; a score metric names its score ("average churn probability")."""
    what = _WHAT_SCORE.get((r.get("query") or {}).get("model"), "")
    return {"funnel": "view-to-purchase conversion", "score_mean": f"average {what} probability", "score_share_above": f"share of users with {_score_line(r)}",
            "score_count_above": f"users with {_score_line(r)}"}.get(str(r.get("metric")), str(r.get("label")))


def _dimension(gb: str) -> str:
    return _DIMENSION.get(gb, (_human(gb),))[0]


_IN = {"device": "on", "payment": "for", "cohort_week": "for", "cohort_month": "for"}


def _group_name(r: Mapping[str, Any], g: Any) -> str:
    if g is None:
        return {"payment": "never paid", "score_band": "no score"}.get(str(r.get("group_by")), f"no {_human(r.get('group_by'))}")
    return _human(g)


_DIMENSION = {"category": ("category", "categories"), "device": ("device", "devices"), "country": ("country", "countries"),
              "payment": ("payment method", "payment methods"), "score_band": ("score band", "score bands"),
              "cohort_week": ("weekly cohort", "weekly cohorts"), "cohort_month": ("monthly cohort", "monthly cohorts")}


def _render_groups(r: Mapping[str, Any]) -> str:
    metric, rows, gb, q = str(r["metric"]), r.get("rows") or [], str(r.get("group_by")), r.get("query") or {}
    one, many = _DIMENSION.get(gb, (_human(gb), _human(gb) + "s"))
    label, users = _label(r), _of_users(r)
    scope = _scope({k: v for k, v in q.items() if k != gb})  # "mobile vs desktop": the groups say it
    if not rows:
        return f"No {r.get('unit')}{users}{scope} match {_period(r)}."
    listed = "; ".join(f"{_group_name(r, row.get('group'))} {_ratio_words(metric, row)}" for row in rows)
    shown = f"the top {len(rows)} of {r.get('groups')} {many}" if r.get("groups", 0) > len(rows) else f"all {len(rows)} {many}"
    if r.get("focus"):
        head, base = rows[0], r["total"].get("value")
        who = " ".join(_populations(r))
        what = f"paid with {_group_name(r, head.get('group'))}" if gb == "payment" else f"are in {_group_name(r, head.get('group'))}"
        return (f"Of the {_value(metric, base)} {who + ' ' if who else ''}{r.get('unit')}{scope} {_period(r)}, {_value(metric, head.get('value'))} "
                f"({_pct(head.get('share'))}) {what}. By {one}: {listed}.")
    top, lowest = rows[0], str(r.get("sorted_by", "")).endswith("ascending")
    if str(r.get("sorted_by", "")).startswith("value") and top.get("group") is not None:
        if _is_rate(metric) or metric == "avg_order_value":
            of = f" of {r.get('denominator_label')}" if metric != "avg_order_value" and r.get("denominator_label") and top.get("denominator") is not None else ""
            head = (f"{label[:1].upper() + label[1:]}{users}{scope} is {'lowest' if lowest else 'highest'} {_IN.get(gb, 'in')} "
                    f"{_group_name(r, top.get('group'))}: {_ratio_words(metric, top).replace(' (', of + ' (', 1)}")
        else:
            head = f"{_group_name(r, top.get('group'))} has the {'least' if lowest else 'most'} {label}{users}{scope}: {_ratio_words(metric, top)}"
        head += f", {_period(r)}{_models(r)}."
    else:
        head = f"{label[:1].upper() + label[1:]}{users}{scope} by {one}, {_period(r)}{_models(r)}."
    prev = r["total"].get("previous")
    change = f", {_change(metric, prev)} the period before" if prev else ""
    return f"{head} By {one}, {shown}: {listed}. Overall: {_ratio_words(metric, r['total'])}{change}."


def partial_periods(r: Mapping[str, Any]) -> set[str]:
    """Periods the window or the data cuts: the engine's notes name the last; a `since` inside the first cuts that one."""
    gb, q = str(r.get("group_by")), r.get("query") or {}
    cut = {n.split(f"the {gb} ", 1)[1].split(" is partial")[0] for n in r.get("notes") or [] if " is partial:" in n and f"the {gb} " in n}
    rows = r.get("rows") or []
    first = min((row["group"] for row in rows if row.get("group")), default=None)
    since = q.get("since") or (r.get("citations") or {}).get("data_first")
    if first and since:
        start = pd.Timestamp(first if gb != "month" else first + "-01")
        if pd.Timestamp(str(since)[:10]) > start:
            cut.add(first)
    return cut


def _render_trend(r: Mapping[str, Any]) -> str:
    metric, rows, gb = str(r["metric"]), r.get("rows") or [], str(r.get("group_by"))
    if not rows:
        return f"No {r.get('unit')}{_of_users(r)}{_scope(r.get('query') or {})} {_period(r)}."
    word = {"day": "day", "week": "week", "month": "month"}[gb]
    name = lambda g: f"the week of {g}" if gb == "week" else (f"{pd.Timestamp(g + '-01'):%B %Y}" if gb == "month" else str(g))  # noqa: E731
    partial = set(r.get("partial") or [])
    value_of = {row.get("group"): row.get("value") for row in rows}
    label = f"{ {'day': 'daily', 'week': 'weekly', 'month': 'monthly'}[gb]} {_label(r)}"
    on = "on" if gb == "day" else "in"
    head = f"{label[:1].upper() + label[1:]}{_of_users(r)}{_scope(r.get('query') or {})} {_period(r)}{_models(r)}"
    trend = r.get("trend")
    if trend:
        first, last = trend["first"], trend["last"]
        moved = _change(metric, {"value": value_of.get(first), **trend})
        head += (f" went from {_value(metric, value_of.get(first))} {on} {name(first)} to {_value(metric, value_of.get(last))} "
                 f"{on} {name(last)}: {moved.split(' from ')[0].rstrip(',')}")
        if _is_rate(metric) and trend.get("highest"):
            best, worst = trend["highest"], trend["lowest"]
            head += (f"; the highest was {_value(metric, value_of.get(best))} {on} {name(best)}, "
                     f"the lowest {_value(metric, value_of.get(worst))} {on} {name(worst)}")
    listed = "; ".join(f"{row.get('group')} {_ratio_words(metric, row)}" for row in rows)
    latest = f" (the latest {len(rows)} of {r.get('groups')})" if (r.get("groups") or 0) > len(rows) else ""
    text = f"{head}. By {word}{latest}: {listed}. Overall: {_ratio_words(metric, r['total'])}."
    if partial:
        text += f" Partial {word}s (cut by the window or the end of the data), left out of the change: {', '.join(sorted(partial))}."
    return text


def _render_retention(r: Mapping[str, Any]) -> str:
    rows, gb, q = r.get("rows") or [], str(r.get("group_by")), r.get("query") or {}
    unit = "week" if gb == "cohort_week" else "month"
    if not rows:
        return f"No users were first seen {_period(r)}, so there is no cohort to follow."

    data_last = (r.get("citations") or {}).get("data_last")

    def cohort_name(g: str) -> str:
        return f"the week of {g}" if unit == "week" else f"{pd.Timestamp(g + '-01'):%B %Y}"

    def period_name(g: str, k: int) -> str:
        if unit == "week":
            return f"week {k}"
        return f"{(pd.Timestamp(g + '-01') + pd.DateOffset(months=k)):%B}"

    def curve(row: Mapping[str, Any], most: int = 4) -> str:
        cells = [c for c in row.get("periods") or [] if c["period"] >= 1][:most]
        if not cells:
            return f"no later {unit} is in the data yet"
        said = [f"{_pct(c['rate'])} ({_count(c['active'])})" + (" came back" if i == 0 else "") + f" in {period_name(row['group'], c['period'])}"
                + (f" (partial: the data ends {data_last})" if c.get("partial") else "") for i, c in enumerate(cells)]
        return ", ".join(said[:-1]) + (" and " if len(said) > 1 else "") + said[-1]

    if len(rows) == 1:
        row = rows[0]
        return (f"The {cohort_name(row['group'])} cohort{_scope(q)} has {_count(row.get('denominator'))} users (first seen then). "
                f"Of them, {curve(row)}. (Came back: had a session in that {unit}.)")
    t = r["total"]
    head = (f"First-{unit} retention across {r.get('groups')} {unit}ly cohorts{_scope(q)} is {_pct(t.get('value'))}: "
            f"{_count(t.get('numerator'))} of {_count(t.get('denominator'))} users came back the {unit} after they were first seen.")
    if unit == "month":  # each cohort's later months have their own names
        listed = "; ".join(f"{cohort_name(row['group'])} ({_count(row.get('denominator'))} users): {curve(row, 3)}" for row in rows)
        return f"{head} By cohort: {listed}."
    # weeks are numbered the same for every cohort: name them once, then each cohort's shares in that order
    shown = sorted({c["period"] for row in rows for c in row.get("periods") or [] if 1 <= c["period"] <= 3})
    if not shown:
        return f"{head} No cohort has a later week in the data yet."
    weeks = ", ".join(str(k) for k in shown[:-1]) + (" and " if len(shown) > 1 else "") + str(shown[-1])

    def shares(row: Mapping[str, Any]) -> str:
        cells = [c for c in row.get("periods") or [] if c["period"] in shown]
        if not cells:
            return "no later week yet"
        return ", ".join(f"{_pct(c['rate'])} ({_count(c['active'])})" + (" partial" if c.get("partial") else "") for c in cells)

    listed = "; ".join(f"{cohort_name(row['group'])} ({_count(row.get('denominator'))} users) {shares(row)}" for row in rows)
    partial = f" A share marked partial counts a week the data ends inside (on {data_last})." if any(
        c.get("partial") for row in rows for c in row.get("periods") or [] if c["period"] in shown) else ""
    return f"{head} By cohort, the share that came back in week{'s' if len(shown) > 1 else ''} {weeks}: {listed}.{partial}"


def value_text(metric: str, value: Any) -> str:
    """A metric's value as answers show it: "40.5%", "1,234", "3,197,665.16" (for tables and charts)."""
    return _value(metric, value)


def metric_title(r: Mapping[str, Any]) -> str:
    """A result's name for a chart or table title: "Cart abandonment by category", "Weekly session conversion"."""
    label, gb = _label(r), r.get("group_by")
    label = label[:1].upper() + label[1:]
    if r.get("metric") == "retention":
        return f"Retention by {_dimension(str(gb))}"
    if gb in ("day", "week", "month"):
        return f"{ {'day': 'Daily', 'week': 'Weekly', 'month': 'Monthly'}[str(gb)]} {label[:1].lower() + label[1:]}"
    return f"{label} by {_dimension(str(gb))}" if gb else label


# --- what an answer must state -----------------------------------------------------------------
def _need_group(value: Any, what: str) -> list[KeyFact]:
    """A group's name, as stored ("apple_pay") or in words ("apple pay")."""
    if value is None:
        return []
    forms = {str(value).lower(), _human(value).lower()}
    if re.fullmatch(r"\d{4}-\d{2}", str(value)):
        forms.add(f"{pd.Timestamp(str(value) + '-01'):%B %Y}".lower())
    return [KeyFact(f"{what} {value}", lambda a: any(f in a.lower() for f in forms))]


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """The measure's facts (below) and, for a measure of a few named users, who they are."""
    ids = list((r.get("query") or {}).get("user_ids") or [])
    named = [f for u in ids for f in need_id(u, "user")] if len(ids) <= 3 else []
    if len(ids) > 3:  # "5 of the 10 ranked users": how many were chosen, or "5 users" reads as the whole shop's
        named = need_number(len(ids), "how many users were chosen")
    q = r.get("query") or {}
    for column in ("device", "country", "category", "payment"):  # "5 of the 10 users" without "on mobile" is another count
        values = [str(v) for v in q.get(column) or []]
        if 1 <= len(values) <= 2 and column != q.get("group_by"):
            for v in values:
                shown = {v.lower(), _human(v).lower()} if column == "payment" else {v.lower()}
                named.append(KeyFact(f"the filter {column} {v}", lambda a, shown=shown: any(x in a.lower() for x in shown)))
    return _measure_facts(args, r, question) + named


def _measure_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """The headline value with its denominator; for groups the leading group and its value."""
    t, rows, metric = r.get("total") or {}, r.get("rows") or [], str(r.get("metric"))
    if r.get("metric") == "retention":
        if len(rows) == 1:
            row = rows[0]
            first = next((c for c in row.get("periods") or [] if c["period"] == 1), None)
            return need_number(row.get("denominator"), "cohort size") + (need_number(first["rate"], "next-period retention") if first else [])
        return need_number(t.get("value"), "retention") + need_number(t.get("denominator"), "cohort users")
    if r.get("group_by") in ("day", "week", "month") and rows:
        whole = [row for row in rows if row.get("group") not in set(r.get("partial") or [])] or rows
        last = whole[-1]
        return _need_group(last.get("group"), "the latest whole period") + need_number(last.get("value"), "its value")
    if r.get("group_by") and rows:
        top = rows[0]
        facts = _need_group(top.get("group"), "leading group") + need_number(top.get("value"), "its value")
        if r.get("focus") and top.get("share") is not None:
            facts += need_number(top.get("share"), "its share")
        return facts
    if metric == "funnel":
        steps = {s["step"]: s for s in t.get("steps") or []}
        return (need_number(steps.get("view", {}).get("sessions"), "sessions with a view")
                + need_number(steps.get("purchase", {}).get("sessions"), "sessions that purchased"))
    facts = need_number(t.get("value"), str(r.get("label")))
    if t.get("denominator") is not None:
        facts += need_number(t["denominator"], str(r.get("denominator_label")))
    elif (r.get("population") or {}).get("units"):
        facts += need_number(r["population"]["units"], "the population counted from")
    if t.get("previous") and t["previous"].get("value") is not None:
        facts += need_number(t["previous"]["value"], "the previous period's value")
    if t.get("examples") and _ASKS_WHO.search(question):  # "find users who…" wants some of them named
        facts += need_id(t["examples"][0], "an example user")
    return facts


_ASKS_WHO = re.compile(r"\b(?:find|which|who|list|show|name)\b", re.I)


def remember(args: Mapping[str, Any], r: Mapping[str, Any], state: ConversationState) -> None:
    state.last_call = {"name": "query_metric", "args": dict(args)}


# --- a table of the rows, for front ends (the CLI prints it with Rich) ---------------------------
def result_table(r: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Column names and formatted cells of a grouped result (None for a single number)."""
    rows, metric, gb = r.get("rows") or [], str(r.get("metric")), r.get("group_by")
    if not gb or not rows or "error" in r:
        return None
    if metric == "retention":
        unit = "week" if gb == "cohort_week" else "month"
        horizon = max((c["period"] for row in rows for c in row.get("periods") or []), default=0)
        head = ["cohort", "users"] + [f"{unit} {k}" for k in range(1, horizon + 1)]
        body = []
        for row in rows:
            cells = {c["period"]: c for c in row.get("periods") or []}
            body.append([str(row["group"]), _count(row.get("denominator"))]
                        + [(_pct(cells[k]["rate"]) + ("*" if cells[k].get("partial") else "")) if k in cells else "" for k in range(1, horizon + 1)])
        return head, body
    if metric == "funnel":
        head = [_dimension(str(gb)), "viewed", "carted", "checkout", "purchased", "view → purchase"]
        body = []
        for row in rows:
            s = {x["step"]: x["sessions"] for x in row.get("steps") or []}
            body.append([_group_name(r, row.get("group"))] + [_count(s.get(k)) for k in ("view", "cart", "checkout", "purchase")]
                        + [_pct(row.get("value"))])
        return head, body
    head = [_dimension(str(gb)), _label(r)]
    has_den = any(row.get("denominator") is not None for row in rows)
    if has_den:
        head += [str(r.get("numerator_label") or "numerator"), str(r.get("denominator_label") or "denominator")]
    has_share = any(row.get("share") is not None for row in rows)
    if has_share:
        head.append("share of total")
    has_prev = any(row.get("previous") for row in rows)
    if has_prev:
        head.append("change")
    body = []
    for row in rows:
        cells = [_group_name(r, row.get("group")), _value(metric, row.get("value"))]
        if has_den:
            num = row.get("numerator")
            cells += [_money(num) if metric == "avg_order_value" else _count(num) if num is not None else "", _count(row.get("denominator"))]
        if has_share:
            cells.append(_pct(row.get("share")) if row.get("share") is not None else "")
        if has_prev:
            cells.append(_change(metric, row["previous"]) if row.get("previous") else "")
        body.append(cells)
    return head, body


# --- the router's way in ------------------------------------------------------------------------
# Wording that makes a question the classifier filed elsewhere an analytic query: a grouping, a
# trend, a cohort, a threshold on a score, a score population, a payment method, a comparison
# with the period before, or a rate the segment tool does not compute.
_GROUPED = (
    r"\b(?:by|per|across|for\s+each|broken\s+down\s+by|split\s+by|breakdown\s+by)\s+(?:the\s+)?(?:device|platform|country|countries|market|region|"
    r"categor(?:y|ies)|payment|cohort|week|month|day|decile|band|score\s+band)s?\b"
    r"|\b(?:which|what)\s+(?:device|platform|country|market|region|categor(?:y|ies)|payment\s+method)s?\s+(?:has|have|had|is|are|shows?|sees?|gets?|converts?|brings?|drives?)\b"
    r"|\b(?:daily|weekly|monthly)\b|\b(?:week|month)[- ]over[- ](?:week|month)\b"
)
_COHORTS = RETENTION_MEASURE + r"|\bcohorts?\b|\bcome\s+back\b"
_THRESHOLDS = r"\b(?:score|probability|risk)s?\s+(?:of\s+)?(?:above|over|greater\s+than|more\s+than|higher\s+than|at\s+least|below|under|less\s+than|>=?|<=?)\s*\d"
_POPULATIONS = (r"\bhigh[- ]risk\s+(?:users|customers|shoppers|accounts|buyers|people)\b|\blikely\s+to\s+churn\b|\bchurners\b"
                r"|\bpay(?:s|ing)?\s+with\b|\bpaid\s+with\b|\bpayment\s+methods?\b|\bpaypal\b|\bgift\s+cards?\b")
_VERSUS_PREVIOUS = r"\b(?:vs\.?|versus|compared\s+(?:with|to))\s+(?:the\s+)?(?:last|previous|prior)\s+(?:week|month|period)\b"
_RATES = (r"\bcart[- ]to[- ]purchase\b|\bfrom\s+(?:the\s+)?cart\s+to\s+(?:purchase|checkout|order)\b|\babandonment\b|\brefund\s+rate\b"
          r"|\bhow\s+many\s+(?:users|customers|buyers|shoppers|people)\b")
_NEVER_CHECKOUT = r"\b(?:never|not|didn't|did\s+not|without)\s+(?:\w+\s+)?(?:check(?:ed|ing)?[\s-]?out|reach(?:ed)?\s+(?:the\s+)?checkout)\b"
_SCORE_STATS = (r"\bhow\s+many\b|\bnumber\s+of\b|\bshare\b|\bpercent(?:age)?\b|\bproportion\b|\bfraction\b|\baverage\b|\bmean\b|\bmedian\b"
                r"|\bdistribution\b|\bdeciles?\b|\b(?:order\s+value|aov|revenue|conversion)\b")

_FROM_SEGMENT = re.compile("|".join((_GROUPED, _COHORTS, _THRESHOLDS, _POPULATIONS, _VERSUS_PREVIOUS, _RATES, UP_OR_DOWN, MONEY_MEASURE, THAN_GROUP)), re.I)
_FROM_SEARCH = re.compile("|".join((_GROUPED, _COHORTS, _THRESHOLDS, _VERSUS_PREVIOUS, _RATES, _NEVER_CHECKOUT)), re.I)
_FROM_SCORES = re.compile("|".join((_GROUPED, _COHORTS, _THRESHOLDS, _SCORE_STATS, THAN_GROUP)), re.I)
_FROM_COMPARE = re.compile(r"\b(?:mobile|desktop|tablet)\b.{0,20}\b(?:vs\.?|versus|against|compared\s+(?:with|to))\s+(?:mobile|desktop|tablet)\b"
                           r"|\bthis\s+(?:week|month)\b.{0,40}\b(?:vs\.?|versus|compared\s+(?:with|to)|against)\s+(?:the\s+)?(?:last|previous)\b"
                           rf"|{_GROUPED}", re.I)

TOOL = ToolSpec(
    func=query_metric,
    render=render,
    key_facts=key_facts,
    remember=remember,
    repeatable=frozenset({"since", "until", "category", "country", "device"}),
    routes=(
        Route(
            label="metric",
            args=metric_args,
            one_user="profile",  # "the average order value of u00218" asks about that user
            over_period=MEASURE_OVER_PERIOD,
            of_ranked=OF_RANKED,
            claims=(("segment", _FROM_SEGMENT), ("search", _FROM_SEARCH), ("top_churn", _FROM_SCORES), ("top_risk", _FROM_SCORES),
                    ("top_intent", _FROM_SCORES), ("churn", _FROM_SCORES), ("risk", _FROM_SCORES), ("intent", _FROM_SCORES),
                    ("compare", _FROM_COMPARE)),
            # Wording of groups, trends, cohorts, thresholds and score populations: questions that share
            # the segment tool's words ("conversion rate on mobile") stay there; the claims bring the rest.
            examples=(
                "which category has the highest cart abandonment?", "cart abandonment by category {t}", "which country converts best?",
                "weekly conversion rate {t}", "how did weekly conversion change over the last 8 weeks?", "sessions per month",
                "monthly orders {t}", "which payment method has the highest refund rate?", "refund rate per device",
                "revenue split by payment method {t}", "break down orders by device", "how many users have a fraud score above 0.8?",
                "how many customers have a churn probability over 0.7?", "what share of users have a risk score above 0.5?",
                "what fraction of shoppers have an intent score above 0.6?", "revenue from high-risk users {t}",
                "what share of high-risk users pay with paypal?", "retention of the January cohort", "monthly cohort retention",
                "weekly retention by signup cohort", "how many users come back a month after their first visit?",
                "checkout funnel by device", "{c} funnel by week", "cart to purchase rate by country",
                "how many users added to the cart but never checked out?", "find users who added items to the cart but never checked out",
                "sessions this month compared with the previous month", "top {n} countries by revenue", "daily sessions {t}",
                "average churn probability by device", "revenue by fraud score band", "{c} revenue per week {t}",
                "how many orders did we get per day {t}?", "average fraud score by payment method", "conversion by churn decile",
                "how many sessions per week on {d}?", "orders placed by likely churners {t}", "abandonment rate per country",
            ),
        ),
    ),
)
