"""Typed analytic questions — groups, rates, trends, cohorts — compiled to parameterised DuckDB SQL.

A planner fills a :class:`MetricQuery`; :class:`QueryEngine` checks it against the workspace
(which columns exist, which models are trained), compiles it to SQL whose identifiers come only
from the whitelists in this module and whose values are all bound parameters, runs it over the
events Parquet and the models' score tables, and returns a JSON-able :class:`MetricResult`
(numerators, denominators, totals, the SQL that ran, citations). No SQL written by an LLM runs.

How each number is counted (the one definition; tests check it against plain pandas):

- **Time.** Every event belongs to its *session's start* (UTC): a session that runs past
  midnight counts on the day it began. ``since`` is "on or after", ``until`` is "on or before
  that whole day" (a date and time includes that instant) — :func:`day_range`.
- **Units.** ``users``, ``sessions`` and ``orders`` count distinct ids. An order is an
  ``order_id`` of purchase rows (a purchase without one counts its session as the order).
  ``revenue`` is price × quantity of purchase rows; ``avg_order_value`` is revenue / orders.
- **Rates.** ``session_conversion`` = sessions with a purchase / sessions;
  ``cart_to_purchase`` = carted sessions that purchased / carted sessions;
  ``cart_abandonment`` = carted sessions that did not purchase / carted sessions;
  ``refund_rate`` = orders with a refund (matched by ``order_id``, whenever it happened, since
  refunds come days later in sessions of their own) / orders placed in the window.
- **Funnel.** view → cart → checkout → purchase, nested: each step counts the sessions that
  reached it *and* every earlier step, so step rates never exceed 1.
- **Category** is an item attribute. With a category (as a filter or a group), a session's
  view, cart, purchase and refund steps are those of items in that category; checkout carries
  no item in the canonical schema, so it counts when the session reached checkout. A session
  touching several categories counts once in each.
- **Totals** are the same question without the group: a session in several categories counts
  once, and one touching none counts too (unless a category filter is set).
- **Device, country** are the session's (its first non-empty value). **Payment** is known only
  at checkout: a card stored as ``brand_last4`` groups as its brand (the digits never leave
  this module); it applies to orders (the order's method) and users (users who paid with it),
  not to session metrics, where every session with a payment has checked out.
- **Users** in a window are users with a session starting in it; ``did``/``did_not`` steps
  describe the unit counted: the session for session metrics, the user (over the window, within
  the group) for user and score metrics.
- **Scores** come from each model's latest ``models/<name>/<version>/scores.parquet`` (one
  probability per user as of training). "Above a threshold" means at or above it.
  ``score_band`` deciles are ntiles of the whole score table (D01 lowest … D10 highest), so a
  band means the same in every query.
- **Cohorts** are users by the week (Monday) or month of their first event ever. For
  ``retention`` the date range selects cohorts; a user is retained in period k when they have a
  session (matching the row filters) k weeks/months after their cohort began.
- **Comparison** runs the same query over the window of equal length just before ``since``.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shopsight.behavior.workspace import Workspace, WorkspaceError

Metric = Literal[
    "users",
    "sessions",
    "orders",
    "revenue",
    "avg_order_value",
    "session_conversion",
    "cart_to_purchase",
    "cart_abandonment",
    "refund_rate",
    "funnel",
    "retention",
    "score_mean",
    "score_share_above",
    "score_count_above",
]
GroupBy = Literal[
    "category", "device", "country", "payment", "day", "week", "month", "cohort_week", "cohort_month", "score_band"
]
Step = Literal["view", "cart", "checkout", "purchase", "refund"]
ModelName = Literal["churn", "risk", "intent"]
Unit = Literal["session", "user", "order", "cohort"]

METRIC_NAMES: tuple[str, ...] = get_args(Metric)
GROUP_BYS: tuple[str, ...] = get_args(GroupBy)
STEPS: tuple[str, ...] = get_args(Step)
SCORE_MODELS: tuple[str, ...] = get_args(ModelName)
MAX_ROWS = 20
MAX_USER_IDS = 5000
MAX_BAND_EDGES = 11

TIME_GROUPS = frozenset({"day", "week", "month"})
PERIOD_GROUPS = TIME_GROUPS | {"cohort_week", "cohort_month"}
ORDERED_GROUPS = PERIOD_GROUPS | {"score_band"}  # sorted by group, not value
OPTIONAL_COLUMNS = ("device", "country", "payment")  # group/filter columns a data set may lack


@dataclass(frozen=True)
class MetricDef:
    """What a metric counts: its unit, how its value is formed, and the words for its numbers."""

    unit: Unit
    kind: Literal["count", "sum", "rate", "mean", "funnel", "retention"]
    label: str
    unit_label: str  # what `units` counts, plural
    numerator: str | None = None
    denominator: str | None = None


METRICS: dict[str, MetricDef] = {
    "users": MetricDef("user", "count", "users", "users"),
    "sessions": MetricDef("session", "count", "sessions", "sessions"),
    "orders": MetricDef("order", "count", "orders", "orders"),
    "revenue": MetricDef("order", "sum", "revenue", "orders", "revenue"),
    "avg_order_value": MetricDef("order", "rate", "average order value", "orders", "revenue", "orders"),
    "session_conversion": MetricDef("session", "rate", "session conversion", "sessions", "sessions with a purchase", "sessions"),
    "cart_to_purchase": MetricDef("session", "rate", "cart → purchase rate", "sessions", "carted sessions that purchased", "carted sessions"),
    "cart_abandonment": MetricDef("session", "rate", "cart abandonment", "sessions", "carted sessions without a purchase", "carted sessions"),
    "refund_rate": MetricDef("order", "rate", "refund rate", "orders", "refunded orders", "orders"),
    "funnel": MetricDef("session", "funnel", "view → cart → checkout → purchase funnel", "sessions", "sessions that purchased", "sessions with a view"),
    "retention": MetricDef("cohort", "retention", "retention of first-seen cohorts", "users", "active users", "cohort users"),
    "score_mean": MetricDef("user", "mean", "mean score", "users", "sum of scores", "scored users"),
    "score_share_above": MetricDef("user", "rate", "share of users at or above the threshold", "users", "users at or above the threshold", "scored users"),
    "score_count_above": MetricDef("user", "count", "users at or above the threshold", "users", "users at or above the threshold", "scored users"),
}
SCORE_METRICS = frozenset({"score_mean", "score_share_above", "score_count_above"})
_METHOD_SQL = "regexp_replace(payment, '_[0-9]{4}$', '')"  # visa_0398 -> visa: the brand, never the digits
_DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")


class MetricQueryError(ValueError):
    """A query the planner can fix: the message names what is wrong and what is allowed.

    The tool wrapping the engine turns it into an error result (``to_dict()``) for the model.
    """

    def __init__(self, message: str, *, field: str | None = None, allowed: list[str] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.allowed = list(allowed or [])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self)}
        if self.field:
            out["field"] = self.field
        if self.allowed:
            out["allowed"] = self.allowed
        return out


# --- the one meaning of a date range ------------------------------------------------------------
def _utc(value: str, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(str(value).strip())
    except (ValueError, TypeError):
        ts = pd.NaT
    if ts is pd.NaT:
        raise MetricQueryError(f"{what} '{value}' is not a date: use YYYY-MM-DD, e.g. 2026-02-01", field=what)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def day_range(since: str | None, until: str | None) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``[start, end)`` in UTC for ``since``/``until``: on or after ``since``; on or before ``until``.

    A date-only ``until`` includes that whole day (the end is the next midnight); a date and time
    includes that instant. Times without a zone are UTC.

    Raises:
        MetricQueryError: a value is not a date, or the range is empty (``since`` after ``until``).
    """
    start = _utc(since, "since") if since else None
    end = None
    if until:
        end = _utc(until, "until")
        end = end + pd.Timedelta(days=1) if _DATE_ONLY.match(str(until)) else end + pd.Timedelta(microseconds=1)
    if start is not None and end is not None and start >= end:
        raise MetricQueryError(
            f"the date range is empty: since {since} is after until {until}; give since on or before until",
            field="since",
        )
    return start, end


# --- the spec -----------------------------------------------------------------------------------
class ScoreFilter(BaseModel):
    """Keep users whose latest ``model`` score is within ``[min, max]`` (either bound optional)."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = Field(description="Which model's score: churn, risk (fraud) or intent.")
    min: float | None = Field(None, description="Lowest score kept (inclusive), in [0, 1].")
    max: float | None = Field(None, description="Highest score kept (inclusive), in [0, 1].")

    @field_validator("min", "max")
    @classmethod
    def _in_unit_interval(cls, v: float | None, info: Any) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"score {info.field_name} {v} is outside [0, 1]: scores are probabilities")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "ScoreFilter":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"score filter on {self.model}: min {self.min} is above max {self.max}")
        return self


class MetricQuery(BaseModel):
    """One analytic question as data: a metric, an optional group, filters, comparison, sort, limit.

    Filters combine with AND; a list filter (category, device, …) keeps any of its values,
    compared case-insensitively.
    """

    model_config = ConfigDict(extra="forbid")

    metric: Metric = Field(description="What to compute (see METRICS).")
    model: ModelName | None = Field(None, description="The model a score_* metric reads.")
    threshold: float | None = Field(None, description="score_share_above / score_count_above: at or above this (default 0.5).")
    group_by: GroupBy | None = Field(None, description="One grouping; none gives a single row.")
    band_model: ModelName | None = Field(None, description="score_band: whose score (default: `model`).")
    bands: Literal["deciles"] | list[float] = Field("deciles", description="score_band: deciles, or increasing edges in [0, 1].")
    since: str | None = Field(None, description="On or after this day (YYYY-MM-DD, UTC).")
    until: str | None = Field(None, description="On or before this whole day (YYYY-MM-DD, UTC).")
    category: list[str] | None = None
    device: list[str] | None = None
    country: list[str] | None = None
    payment: list[str] | None = Field(None, description="Payment methods (card brand, wallet, promo…).")
    purchased: bool | None = Field(None, description="Shorthand for did=['purchase'] (true) or did_not=['purchase'] (false).")
    did: list[Step] = Field(default_factory=list, description="The unit reached every one of these steps.")
    did_not: list[Step] = Field(default_factory=list, description="The unit reached none of these steps.")
    scores: list[ScoreFilter] = Field(default_factory=list, description="Keep users by score (AND).")
    user_ids: list[str] | None = Field(None, description="Only these users (e.g. a previous answer's ranking).")
    compare: bool = Field(False, description="Also compute the window of equal length just before `since`.")
    sort: Literal["value", "group"] | None = Field(None, description="Default: group for time, cohort and band groups, else value.")
    descending: bool | None = Field(None, description="Default: descending by value, ascending by group.")
    limit: int = Field(10, description=f"Rows returned (1–{MAX_ROWS}); `groups` tells how many there were.")
    examples: int = Field(3, description="Example ids per row (0–20), taken from the numerator's units.")

    @field_validator("category", "device", "country", "payment", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("category", "device", "country", "payment", "user_ids")
    @classmethod
    def _non_empty(cls, v: list[str] | None, info: Any) -> list[str] | None:
        if v is None:
            return None
        v = [s.strip() for s in v if s is not None and s.strip()]
        if not v:
            raise ValueError(f"{info.field_name} is an empty list: leave it out to keep every value")
        if info.field_name == "user_ids" and len(v) > MAX_USER_IDS:
            raise ValueError(f"user_ids has {len(v)} ids; at most {MAX_USER_IDS}: filter by score or segment instead")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"threshold {v} is outside [0, 1]: scores are probabilities")
        return v

    @field_validator("since", "until")
    @classmethod
    def _date(cls, v: str | None, info: Any) -> str | None:
        if v is not None and str(v).strip():
            _utc(v, info.field_name)
            return str(v).strip()
        return None

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int) -> int:
        if not 1 <= v <= MAX_ROWS:
            raise ValueError(f"limit {v} is outside 1–{MAX_ROWS}")
        return v

    @field_validator("examples")
    @classmethod
    def _examples(cls, v: int) -> int:
        if not 0 <= v <= 20:
            raise ValueError(f"examples {v} is outside 0–20")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not 2 <= len(v) <= MAX_BAND_EDGES:
                raise ValueError(f"bands needs 2–{MAX_BAND_EDGES} edges (e.g. [0, 0.5, 0.8, 1]), got {len(v)}")
            if any(not 0.0 <= e <= 1.0 for e in v) or any(b <= a for a, b in zip(v, v[1:])):
                raise ValueError(f"band edges {v} must increase strictly within [0, 1], e.g. [0, 0.5, 0.8, 1]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "MetricQuery":
        m = self.metric
        if m in SCORE_METRICS:
            if self.model is None:
                raise MetricQueryError(f"metric {m} needs `model`: one of {', '.join(SCORE_MODELS)} (fraud scores are `risk`)", field="model")
            if self.threshold is None and m != "score_mean":
                self.threshold = 0.5
        elif self.model is not None and self.group_by != "score_band":
            raise MetricQueryError(f"`model` is read only by score_* metrics, not {m}; to keep users by score use `scores`", field="model")
        if self.threshold is not None and m not in ("score_share_above", "score_count_above"):
            raise MetricQueryError(f"`threshold` applies to score_share_above and score_count_above, not {m}", field="threshold")
        if self.group_by == "score_band" and self.band_model is None:
            if self.model is None:
                raise MetricQueryError(f"group_by score_band needs `band_model`: one of {', '.join(SCORE_MODELS)}", field="band_model")
            self.band_model = self.model
        if self.purchased is not None:
            target = self.did if self.purchased else self.did_not
            if "purchase" not in target:
                target.append("purchase")
            self.purchased = None  # one representation: did / did_not
        both = sorted(set(self.did) & set(self.did_not))
        if both:
            raise MetricQueryError(f"step(s) {', '.join(both)} are in both did and did_not: no unit can match", field="did")
        day_range(self.since, self.until)  # raises on an empty range
        if m == "retention":
            if self.group_by is None:
                self.group_by = "cohort_month"
            if self.group_by not in ("cohort_week", "cohort_month"):
                raise MetricQueryError(f"retention is grouped by cohort_week or cohort_month, not {self.group_by}", field="group_by")
            if self.did or self.did_not:
                raise MetricQueryError("did/did_not do not apply to retention: a user is retained by any session; filter by category, device or country", field="did")
            if self.compare:
                raise MetricQueryError("compare does not apply to retention: the matrix already compares cohorts", field="compare")
        if self.compare:
            if not self.since:
                raise MetricQueryError("compare needs `since` (and `until`, default the last day of data): the previous period has the same length", field="since")
            if self.group_by in TIME_GROUPS:
                raise MetricQueryError(f"compare cannot match {self.group_by} groups across periods: drop compare, or group by {self.group_by} over both periods", field="compare")
        if METRICS[m].unit == "order" and (self.did or self.did_not):
            raise MetricQueryError(f"did/did_not do not apply to order metrics ({m}): every order is a purchase; filter users by `scores` or `user_ids`", field="did")
        return self


def parse_query(spec: MetricQuery | Mapping[str, Any]) -> MetricQuery:
    """A validated :class:`MetricQuery` from a dict (a planner's arguments) or a query.

    Raises:
        MetricQueryError: one message listing every problem, each naming the field and what is allowed.
    """
    if isinstance(spec, MetricQuery):
        return spec
    try:
        return MetricQuery.model_validate(dict(spec))
    except ValidationError as exc:
        problems, fields, allowed = [], [], []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "query"
            if err["type"] == "literal_error":
                expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                problems.append(f"{loc} '{err['input']}' is not allowed; allowed: {', '.join(expected)}")
                allowed += expected
            elif err["type"] == "extra_forbidden":
                problems.append(f"unknown field '{loc}'; fields: {', '.join(MetricQuery.model_fields)}")
                allowed += list(MetricQuery.model_fields)
            else:
                cause = err.get("ctx", {}).get("error")
                if isinstance(cause, MetricQueryError) and cause.field:
                    loc = cause.field
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(msg if loc == "query" or msg.startswith(loc.split(".")[-1]) else f"{loc}: {msg}")
            fields.append(loc)
        raise MetricQueryError("; ".join(problems), field=fields[0] if fields else None, allowed=allowed) from None


# --- the result ---------------------------------------------------------------------------------
class FunnelStep(BaseModel):
    """One funnel step: sessions that reached it (and every earlier step), and its rates."""

    step: str
    sessions: int
    rate_from_previous: float | None
    rate_from_first: float | None


class RetentionCell(BaseModel):
    """Users of a cohort active ``period`` weeks/months after it began."""

    period: int
    start: str
    active: int
    rate: float | None
    partial: bool  # the period runs past the end of the data


class PreviousPeriod(BaseModel):
    """The same row over the previous window, and the change to the current one."""

    value: int | float | None
    numerator: int | float | None = None
    denominator: int | None = None
    units: int = 0
    change: float | None = None  # current - previous (points for a rate)
    change_pct: float | None = None  # relative change in percent, where the previous value is not 0


class MetricRow(BaseModel):
    """One group's numbers: the value, what it was computed from, and ids to cite."""

    group: str | None = None
    value: int | float | None
    numerator: int | float | None = None
    denominator: int | None = None
    units: int
    share: float | None = None  # count and sum metrics by group: this group's part of the total
    steps: list[FunnelStep] | None = None
    periods: list[RetentionCell] | None = None
    previous: PreviousPeriod | None = None
    examples: list[str] = Field(default_factory=list)


class Citations(BaseModel):
    """What a reader needs to trust the numbers: models, the window, the data span, ids."""

    models: list[str] = Field(default_factory=list)  # "risk@v3"
    scores_asof: dict[str, str] = Field(default_factory=dict)
    since: str | None = None
    until: str | None = None  # inclusive day
    previous_since: str | None = None
    previous_until: str | None = None
    data_first: str | None = None
    data_last: str | None = None
    id_kind: str
    ids: list[str] = Field(default_factory=list)


class MetricResult(BaseModel):
    """A query's answer: rows (≤ 20), the total, the SQL that ran with its parameters, citations."""

    metric: str
    label: str
    unit: str
    numerator_label: str | None
    denominator_label: str | None
    group_by: str | None
    rows: list[MetricRow]
    total: MetricRow
    groups: int  # groups before the limit
    sorted_by: str
    citations: Citations
    notes: list[str] = Field(default_factory=list)
    sql: str
    params: dict[str, Any]
    query: dict[str, Any]
    elapsed_ms: float

    def headline(self) -> str:
        """The total in words, denominator included: "10,662 of 26,299 carted sessions (40.5%)"."""
        t = self.total
        if t.value is None:
            return f"no {self.denominator_label or self.unit} in scope"
        if t.denominator is not None and METRICS[self.metric].kind in ("rate", "funnel", "retention"):
            num = f"{t.numerator:,.2f}" if self.metric == "avg_order_value" else f"{int(t.numerator or 0):,}"
            shown = f"{t.value:,.2f}" if self.metric == "avg_order_value" else f"{t.value:.1%}"
            return f"{shown}: {num} {self.numerator_label} of {t.denominator:,} {self.denominator_label}"
        if self.metric == "score_mean":
            return f"mean {t.value:.3f} over {t.denominator:,} {self.denominator_label}"
        if self.metric == "revenue":
            return f"{t.value:,.2f} revenue from {t.units:,} orders"
        if self.metric == "score_count_above":
            return f"{int(t.value):,} of {t.denominator:,} {self.denominator_label}"
        return f"{int(t.value):,} {self.unit}"


@dataclass(frozen=True)
class CompiledQuery:
    """SQL text and its named parameters; ``kind`` tells how rows are read back."""

    sql: str
    params: dict[str, Any]
    kind: Literal["metric", "retention"]


@dataclass(frozen=True)
class _ModelRef:
    name: str
    version: str
    scores_path: Path  # a Parquet file, or a folder of part files (`shopsight score`)

    @property
    def scan(self) -> str:
        """What DuckDB's read_parquet reads: the file, or every part file of the folder."""
        return str(self.scores_path / "*.parquet") if self.scores_path.is_dir() else str(self.scores_path)

    @property
    def cite(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class _WorkspaceFacts:
    """What the events file offers, read once per version of the file."""

    stamp: tuple[tuple[str, int, int], ...]
    columns: frozenset[str]
    ts_has_tz: bool
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    values: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # logical name -> this generation's table


class _Params:
    """Collects bound values under generated names: no value is ever written into SQL text."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values) + 1}"
        self.values[name] = value
        return f"${name}"


def _lower(values: list[str] | None) -> list[str] | None:
    return [v.lower() for v in values] if values else None


def _naive(ts: pd.Timestamp) -> datetime:
    return ts.tz_convert("UTC").tz_localize(None).to_pydatetime()


# --- the session tables ---------------------------------------------------------------------------
TABLES: tuple[str, ...] = ("sessions", "scats", "lines", "refunds", "firsts")


def table_sql(generation: int, columns: frozenset[str], ts_has_tz: bool) -> list[tuple[str, str]]:
    """The statements that derive the engine's tables from the events' Parquet files (``$path``, the list of visible batches).

    Every query reads these instead of re-grouping millions of events: ``sessions`` (one row
    per session: user, start, device, country, which steps it reached), ``scats`` (one row per
    session and category, with that category's view/cart/purchase/refund steps and the
    session's checkout), ``lines`` (purchase rows with their order, method and amount, and their
    session's start, device and country), ``refunds`` (refunded order × category) and
    ``firsts`` (each user's first event). They live in the engine's in-memory connection and
    are rebuilt when the events file changes; ``generation`` suffixes their names.
    """
    null = "CAST(NULL AS VARCHAR)"
    ts = "timezone('UTC', ts)" if ts_has_tz else "CAST(ts AS TIMESTAMP)"
    device = "device" if "device" in columns else null
    country = "country" if "country" in columns else null
    method = _METHOD_SQL if "payment" in columns else null
    order_id = "order_id" if "order_id" in columns else null
    n = int(generation)
    step = "bool_or(event = 'view') AS did_view, bool_or(event = 'add_to_cart') AS did_cart, "
    return [
        ("sessions", f"CREATE OR REPLACE TABLE sessions_{n} AS SELECT *, min(start) OVER (PARTITION BY user_id) AS first_ts FROM ("
                     f"SELECT session_id, any_value(user_id) AS user_id, min({ts}) AS start, "
                     f"max({ts}) AS last_ts, arg_min({device}, ts) FILTER (WHERE {device} IS NOT NULL) AS device, "
                     f"arg_min({country}, ts) FILTER (WHERE {country} IS NOT NULL) AS country, {null} AS category, {step}"
                     "bool_or(event = 'checkout') AS did_checkout, bool_or(event = 'purchase') AS did_purchase, "
                     "bool_or(event = 'refund') AS did_refund FROM read_parquet($path, union_by_name = true) GROUP BY session_id) ORDER BY start"),
        ("scats", f"CREATE OR REPLACE TABLE scats_{n} AS SELECT c.session_id, s.user_id, s.start, s.first_ts, s.device, s.country, c.category, "
                  "c.did_view, c.did_cart, s.did_checkout, c.did_purchase, c.did_refund FROM (SELECT session_id, category, "
                  f"{step}bool_or(event = 'purchase') AS did_purchase, bool_or(event = 'refund') AS did_refund "
                  f"FROM read_parquet($path, union_by_name = true) WHERE category IS NOT NULL GROUP BY session_id, category) c "
                  f"JOIN sessions_{n} s ON s.session_id = c.session_id ORDER BY s.start"),
        ("lines", f"CREATE OR REPLACE TABLE lines_{n} AS SELECT coalesce({order_id}, e.session_id) AS order_key, e.session_id, "
                  f"e.user_id, s.start, s.first_ts, s.device, s.country, e.category, {method} AS method, coalesce(e.price, 0) * e.quantity AS amount "
                  f"FROM read_parquet($path, union_by_name = true) e JOIN sessions_{n} s ON s.session_id = e.session_id WHERE e.event = 'purchase' ORDER BY s.start"),
        ("refunds", f"CREATE OR REPLACE TABLE refunds_{n} AS SELECT DISTINCT coalesce({order_id}, session_id) AS order_key, category "
                    "FROM read_parquet($path, union_by_name = true) WHERE event = 'refund'"),
        ("firsts", f"CREATE OR REPLACE TABLE firsts_{n} AS SELECT user_id, min(first_ts) AS first_ts FROM sessions_{n} GROUP BY user_id"),
    ]


# --- the engine ---------------------------------------------------------------------------------
class QueryEngine:
    """Runs :class:`MetricQuery` specs over one workspace with one in-memory DuckDB connection.

    DuckDB reads the Parquet files directly at each query, so new events or a retrained model are
    seen at once. Safe to share between threads: each call takes its own cursor.

    Args:
        ws: the workspace (events and score tables are read from it).
        threads: DuckDB worker threads (default: DuckDB's, one per core).
        memory_limit: DuckDB memory cap such as "2GB" (default: DuckDB's).
    """

    def __init__(self, ws: Workspace, *, threads: int | None = None, memory_limit: str | None = None) -> None:
        self.ws = ws
        self.threads = threads
        self.memory_limit = memory_limit
        self._con: Any = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._generation = 0
        self._facts: _WorkspaceFacts | None = None

    # -- connection and what the workspace holds ---------------------------------------------
    def _connection(self) -> Any:
        with self._lock:
            if self._con is None:
                import duckdb

                con = duckdb.connect(":memory:")
                con.execute("SET TimeZone = 'UTC'")
                if self.threads:
                    con.execute(f"SET threads = {int(self.threads)}")
                if self.memory_limit:
                    con.execute("SET memory_limit = $m", {"m": str(self.memory_limit)})
                self._con = con
            return self._con

    def close(self) -> None:
        """Close the DuckDB connection (a later query opens a new one)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
                self._facts = None  # its tables went with the connection

    def __enter__(self) -> "QueryEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _workspace_facts(self) -> _WorkspaceFacts:
        """Schema, span, values and the session tables of the events file, rebuilt when the file changes."""
        files, stamp = self._event_files_stamp()
        path = files[0] if len(files) == 1 else self.ws.events_dir
        with self._build_lock:
            cached = self._facts
            if cached is not None and cached.stamp == stamp:
                return cached
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                schemas = [pq.read_schema(f) for f in files]
            except (OSError, pa.ArrowInvalid) as exc:
                raise WorkspaceError(f"cannot read {path}: {exc}; re-create it with `shopsight ingest` or `shopsight demo`") from exc
            schema = schemas[0]
            columns = frozenset(name for one in schemas for name in one.names)
            ts_type = schema.field("ts").type
            ts_has_tz = bool(pa.types.is_timestamp(ts_type) and ts_type.tz)
            self._generation += 1
            gen = self._generation
            cur = self._connection().cursor()
            try:
                for _, sql in table_sql(gen, columns, ts_has_tz):
                    cur.execute(sql, {"path": [str(f) for f in files]} if "$path" in sql else None)
                t = {name: f"{name}_{gen}" for name in TABLES}
                lo, hi = cur.execute(
                    f"SELECT strftime(min(start), '%Y-%m-%dT%H:%M:%S'), strftime(max(last_ts), '%Y-%m-%dT%H:%M:%S') FROM {t['sessions']}"
                ).fetchone()
                values: dict[str, list[str]] = {}
                for col, table, expr in (("category", "scats", "category"), ("device", "sessions", "device"),
                                         ("country", "sessions", "country"), ("payment", "lines", "method")):
                    if col in columns:
                        rows = cur.execute(f"SELECT DISTINCT {expr} AS v FROM {t[table]} WHERE v IS NOT NULL ORDER BY v").fetchall()
                        values[col] = [str(r[0]) for r in rows]
                # Two generations back: no query can still be reading it (one may be on the last one).
                for name in TABLES if gen > 2 else ():
                    cur.execute(f"DROP TABLE IF EXISTS {name}_{gen - 2}")
            except Exception as exc:
                raise WorkspaceError(f"cannot read the events in {path} ({type(exc).__name__}: {exc}); re-create them with `shopsight ingest` or `shopsight demo`") from exc
            finally:
                cur.close()
            facts = _WorkspaceFacts(
                stamp=stamp,
                columns=columns,
                ts_has_tz=ts_has_tz,
                first=pd.Timestamp(lo, tz="UTC") if lo else None,
                last=pd.Timestamp(hi, tz="UTC") if hi else None,
                values=values,
                tables=t,
            )
            self._facts = facts
            return facts

    def _event_files_stamp(self) -> tuple[list[Path], tuple[tuple[str, int, int], ...]]:
        """The visible batch files and their versions (a new, undone or replaced batch changes them)."""
        for attempt in range(3):
            files = self.ws.require_events()
            try:
                return files, tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
            except FileNotFoundError:  # a writer undid or replaced a batch after we read the manifest
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def trained_models(self) -> dict[str, str]:
        """``{name: version}`` of each score model whose latest version saved a score table."""
        out = {}
        for name in SCORE_MODELS:
            ref = self._model_ref(name, required=False)
            if ref is not None:
                out[name] = ref.version
        return out

    def _model_ref(self, name: str, *, required: bool = True, field: str = "model") -> _ModelRef | None:
        from shopsight.behavior.models.registry import latest_version, score_path

        version = latest_version(self.ws, name)
        path = score_path(self.ws, name, version) if version else None
        if path is None or not path.exists():
            if not required:
                return None
            have = [f"{n}@{v}" for n, v in self.trained_models().items()]
            why = f"its latest version {version} saved no score table" if version else "it is not trained"
            raise MetricQueryError(
                f"no {name} scores in workspace '{self.ws.root}': {why}; train it with `shopsight train {name}`"
                f" (trained: {', '.join(have) or 'none'})",
                field=field,
                allowed=[n for n in self.trained_models()],
            )
        return _ModelRef(name, version, path)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        """What a planner may ask of this workspace: metrics, group-bys, filters' values, models, data span."""
        facts = self._workspace_facts()
        return {
            "metrics": list(METRIC_NAMES),
            "group_by": [g for g in GROUP_BYS if g not in OPTIONAL_COLUMNS or g in facts.columns],
            "steps": list(STEPS),
            "models": {n: f"{n}@{v}" for n, v in self.trained_models().items()},
            "values": facts.values,
            "data_first": facts.first.strftime("%Y-%m-%d") if facts.first is not None else None,
            "data_last": facts.last.strftime("%Y-%m-%d") if facts.last is not None else None,
        }

    # -- checks that need the workspace -------------------------------------------------------
    def _check(self, q: MetricQuery, facts: _WorkspaceFacts) -> dict[str, _ModelRef]:
        d = METRICS[q.metric]
        present = [g for g in GROUP_BYS if g not in OPTIONAL_COLUMNS or g in facts.columns]
        if q.group_by in OPTIONAL_COLUMNS and q.group_by not in facts.columns:
            raise MetricQueryError(
                f"cannot group by {q.group_by}: this workspace's events have no '{q.group_by}' column; group by one of {', '.join(present)}",
                field="group_by",
                allowed=present,
            )
        for col in OPTIONAL_COLUMNS:
            if getattr(q, col) and col not in facts.columns:
                raise MetricQueryError(
                    f"cannot filter by {col}: this workspace's events have no '{col}' column; drop the {col} filter",
                    field=col,
                )
        if (q.group_by == "payment" or q.payment) and d.unit in ("session", "cohort"):
            raise MetricQueryError(
                f"payment is known only at checkout, so it cannot split {q.metric}; use it with "
                "users, orders, revenue, avg_order_value, refund_rate or a score metric",
                field="group_by" if q.group_by == "payment" else "payment",
                allowed=["users", "orders", "revenue", "avg_order_value", "refund_rate", *sorted(SCORE_METRICS)],
            )
        if q.metric == "refund_rate" and "order_id" not in facts.columns:
            raise MetricQueryError(
                "refund_rate needs order ids to match refunds to orders, and these events have no 'order_id' column",
                field="metric",
            )
        models: dict[str, _ModelRef] = {}
        if q.model:
            models[q.model] = self._model_ref(q.model, field="model")  # type: ignore[assignment]
        if q.band_model and q.group_by == "score_band":
            models[q.band_model] = self._model_ref(q.band_model, field="band_model")  # type: ignore[assignment]
        for i, sf in enumerate(q.scores):
            models[sf.model] = self._model_ref(sf.model, field=f"scores.{i}.model")  # type: ignore[assignment]
        return models

    def _window(self, q: MetricQuery, facts: _WorkspaceFacts) -> tuple[pd.Timestamp | None, pd.Timestamp | None, pd.Timestamp | None]:
        """(start, end, previous start); with ``compare`` an open end is the day after the data's last day."""
        start, end = day_range(q.since, q.until)
        prev = None
        if q.compare:
            assert start is not None  # validated
            if end is None:
                end = (facts.last or start).normalize() + pd.Timedelta(days=1)
            prev = start - (end - start)
        return start, end, prev

    # -- compilation ----------------------------------------------------------------------------
    def compile(self, query: MetricQuery | Mapping[str, Any]) -> CompiledQuery:
        """Validate ``query`` against the workspace and compile it, without running it."""
        q = parse_query(query)
        facts = self._workspace_facts()
        models = self._check(q, facts)
        return self._compile(q, facts, models)

    def _compile(self, q: MetricQuery, facts: _WorkspaceFacts, models: dict[str, _ModelRef]) -> CompiledQuery:
        p = _Params()
        d = METRICS[q.metric]
        t = facts.tables
        null = "CAST(NULL AS VARCHAR)"
        start, end, prev = self._window(q, facts)
        with_category = q.group_by == "category" or bool(q.category)

        # One list of conditions on the columns every derived table has (user_id, start, device,
        # country, category): the same scope for sessions, order lines and payments.
        conds = []
        if q.user_ids:
            conds.append(f"list_contains({p(q.user_ids)}, user_id)")
        for sf in q.scores:
            bounds = []
            if sf.min is not None:
                bounds.append(f"probability >= {p(sf.min)}")
            if sf.max is not None:
                bounds.append(f"probability <= {p(sf.max)}")
            path = p(models[sf.model].scan)
            conds.append(f"user_id IN (SELECT user_id FROM read_parquet({path}) WHERE {' AND '.join(bounds) or 'TRUE'})")
        user_conds = list(conds)
        if q.metric != "retention":  # for retention the dates choose cohorts, not sessions
            lo = prev if prev is not None else start
            if lo is not None:
                conds.append(f"start >= {p(_naive(lo))}")
            if end is not None:
                conds.append(f"start < {p(_naive(end))}")
        for col in ("device", "country", "category"):
            if getattr(q, col):
                conds.append(f"list_contains({p(_lower(getattr(q, col)))}, lower({col}))")
        paid = f"list_contains({p(_lower(q.payment))}, lower(method))" if q.payment else None
        win = f"CASE WHEN start >= {p(_naive(start))} THEN 'current' ELSE 'previous' END" if prev is not None and start is not None else "'current'"

        def where(extra: list[str]) -> str:
            both = conds + extra
            return " WHERE " + " AND ".join(both) if both else ""

        ctes: list[str] = []
        g, joins = self._group_sql(q, ctes, p, models, t)
        if q.metric == "retention":
            ctes.insert(0, f"facts AS (SELECT * FROM {t['scats'] if with_category else t['sessions']}{where([])})")
            return self._compile_retention(q, ctes, p, t, user_conds, start, end)

        # The total is the same question without the group: by category, its units need not touch a
        # category (unless a category filter says so), so it reads the session table, not scats.
        cat_g, cat_t = with_category, bool(q.category)
        null_g = "CAST(NULL AS BIGINT)" if q.group_by in PERIOD_GROUPS else null
        flag_names = ("did_view", "did_cart", "did_checkout", "did_purchase", "did_refund")
        if d.unit == "order":
            ctes.append(f"ls AS (SELECT *, {win} AS win FROM {t['lines']}{where([paid] if paid else [])})")
            for name, by_cat in (("ol", cat_g), ("ol_t", cat_t)) if cat_g != cat_t else (("ol", cat_g),):
                refunds = t["refunds"] if by_cat else f"(SELECT DISTINCT order_key FROM {t['refunds']})"
                on_cat = " AND r.category = ls.category" if by_cat else ""
                ctes.append(f"{name} AS (SELECT ls.*, r.order_key IS NOT NULL AS refunded FROM ls LEFT JOIN {refunds} r ON r.order_key = ls.order_key{on_cat})")
            total_src = "ol_t" if cat_g != cat_t else "ol"
            cols = "sum(f.amount) AS amount, bool_or(f.refunded) AS refunded"
            parts = [f"SELECT f.win, {g} AS g, FALSE AS is_total, f.order_key AS unit, {cols} FROM ol f{joins} GROUP BY 1, 2, 3, 4"] if q.group_by else []
            parts.append(f"SELECT f.win, {null_g} AS g, TRUE AS is_total, f.order_key AS unit, {cols} FROM {total_src} f GROUP BY 1, 2, 3, 4")
        else:
            base = lambda by_cat: t["scats"] if by_cat else t["sessions"]  # noqa: E731
            ctes.append(f"facts AS (SELECT *, {win} AS win FROM {base(cat_g)}{where([])})")
            if cat_g != cat_t:
                ctes.append(f"facts_t AS (SELECT *, {win} AS win FROM {base(cat_t)}{where([])})")
            total_src = "facts_t" if cat_g != cat_t else "facts"
            key = "session_id" if d.unit == "session" else "user_id"
            paying = ""
            if d.unit == "user" and (paid or q.group_by == "payment"):
                ctes.append(f"pay AS (SELECT DISTINCT {win} AS win, user_id, method FROM {t['lines']}{where(['method IS NOT NULL'] + ([paid] if paid else []))})")
                if paid:
                    paying = " WHERE EXISTS (SELECT 1 FROM pay y WHERE y.win = f.win AND y.user_id = f.user_id)"
            # A session row is already one unit (a session, or a session in one category): regroup only when not.
            unique_g = key == "session_id" and (not cat_g or q.group_by == "category")
            unique_t = key == "session_id" and not cat_t
            flags = lambda unique: ", ".join(f"f.{n}" if unique else f"bool_or(f.{n}) AS {n}" for n in flag_names)  # noqa: E731
            if q.group_by == "payment":
                # A user may pay several ways: one row per method; users who never paid under NULL.
                ctes.append(f"u0 AS MATERIALIZED (SELECT f.win, f.user_id AS unit, {flags(False)} FROM facts f{paying} GROUP BY 1, 2)")
                u_cols = ", ".join(f"u0.{n}" for n in flag_names)
                parts = [
                    f"SELECT u0.win, y.method AS g, FALSE AS is_total, u0.unit, {u_cols} FROM u0 LEFT JOIN pay y ON y.win = u0.win AND y.user_id = u0.unit",
                    f"SELECT u0.win, NULL, TRUE, u0.unit, {u_cols} FROM u0",
                ]
            else:
                parts = []
                if q.group_by:
                    parts.append(f"SELECT f.win, {g} AS g, FALSE AS is_total, f.{key} AS unit, {flags(unique_g)} FROM facts f{joins}{paying}"
                                 + ("" if unique_g else " GROUP BY 1, 2, 3, 4"))
                parts.append(f"SELECT f.win, {null_g} AS g, TRUE AS is_total, f.{key} AS unit, {flags(unique_t)} FROM {total_src} f{paying}"
                             + ("" if unique_t else " GROUP BY 1, 2, 3, 4"))
        ctes.append("u AS (" + "\n  UNION ALL ".join(parts) + ")")

        src = "u"
        if q.metric in SCORE_METRICS:
            assert q.model is not None
            ctes.append(
                f"us AS (SELECT u.*, sc.probability AS prob FROM u LEFT JOIN read_parquet({p(models[q.model].scan)}) sc "
                "ON sc.user_id = u.unit)"
            )
            src = "us"
        steps = [f"did_{s}" for s in q.did] + [f"NOT did_{s}" for s in q.did_not]
        filt = " WHERE " + " AND ".join(steps) if steps else ""
        num, den, ex, extra = self._measures(q, p)
        examples = f"min(unit, {p(q.examples)}) FILTER (WHERE {ex})" if q.examples else "CAST([] AS VARCHAR[])"
        select = (
            f"SELECT win, is_total, {_period_label(q.group_by, 'g')} AS g, count(*) AS units, {num} AS num, {den} AS den, "
            f"{extra}{examples} AS examples FROM {src}{filt} GROUP BY win, is_total, {src}.g ORDER BY 1, 2, 3"
        )
        return CompiledQuery(_with(ctes, select), p.values, "metric")

    def _group_sql(self, q: MetricQuery, ctes: list[str], p: _Params, models: dict[str, _ModelRef], t: dict[str, str]) -> tuple[str, str]:
        """The group expression over ``f`` (session facts or order lines) and the joins it needs."""
        gb = q.group_by
        if gb is None or gb == "payment":
            return ("f.method" if gb == "payment" else "NULL"), ""
        if gb == "score_band":
            assert q.band_model is not None
            path = p(models[q.band_model].scan)
            if q.bands == "deciles":
                ctes.append(
                    "bands AS (SELECT user_id, printf('D%02d [%.3f, %.3f]', d, min(prob) OVER (PARTITION BY d), max(prob) OVER (PARTITION BY d)) AS band "
                    f"FROM (SELECT user_id, probability AS prob, ntile(10) OVER (ORDER BY probability, user_id) AS d FROM read_parquet({path})))"
                )
            else:
                edges = list(q.bands)
                whens = " ".join(f"WHEN probability < {p(hi)} THEN {p(_band_label(lo, hi, False))}" for lo, hi in zip(edges[:-2], edges[1:-1]))
                last = p(_band_label(edges[-2], edges[-1], True))
                ctes.append(
                    f"bands AS (SELECT user_id, CASE {whens} ELSE {last} END AS band FROM read_parquet({path}) "
                    f"WHERE probability >= {p(edges[0])} AND probability <= {p(edges[-1])})"
                )
            return "bd.band", " LEFT JOIN bands bd ON bd.user_id = f.user_id"
        exprs = {
            "category": "f.category",
            "device": "f.device",
            "country": "f.country",
            # Periods group as integers (labelled after the aggregate): date_trunc per row costs twice as much.
            "day": _period_index("day", "f.start"),
            "week": _period_index("week", "f.start"),
            "month": _period_index("month", "f.start"),
            "cohort_week": _period_index("week", "f.first_ts"),
            "cohort_month": _period_index("month", "f.first_ts"),
        }
        return exprs[gb], ""

    def _measures(self, q: MetricQuery, p: _Params) -> tuple[str, str, str, str]:
        """(numerator, denominator, the condition of example units, extra columns) for the final select."""
        m = q.metric
        null = "CAST(NULL AS BIGINT)"
        if m in ("users", "sessions", "orders"):
            return "count(*)", null, "TRUE", ""
        if m == "revenue":
            return "sum(amount)", null, "TRUE", ""
        if m == "avg_order_value":
            return "sum(amount)", "count(*)", "TRUE", ""
        if m == "session_conversion":
            return "count_if(did_purchase)", "count(*)", "did_purchase", ""
        if m == "cart_to_purchase":
            return "count_if(did_cart AND did_purchase)", "count_if(did_cart)", "did_cart AND did_purchase", ""
        if m == "cart_abandonment":
            return "count_if(did_cart AND NOT did_purchase)", "count_if(did_cart)", "did_cart AND NOT did_purchase", ""
        if m == "refund_rate":
            return "count_if(refunded)", "count(*)", "refunded", ""
        if m == "funnel":
            steps = (
                "count_if(did_view) AS s_view, count_if(did_view AND did_cart) AS s_cart, "
                "count_if(did_view AND did_cart AND did_checkout) AS s_checkout, "
                "count_if(did_view AND did_cart AND did_checkout AND did_purchase) AS s_purchase, "
            )
            reached = "did_view AND did_cart AND did_checkout AND did_purchase"
            return f"count_if({reached})", "count_if(did_view)", reached, steps
        if m == "score_mean":
            return "sum(prob)", "count(prob)", "prob IS NOT NULL", ""
        t = p(q.threshold)
        return f"count_if(prob >= {t})", "count(prob)", f"prob >= {t}", ""

    def _compile_retention(
        self, q: MetricQuery, ctes: list[str], p: _Params, t: dict[str, str], user_conds: list[str],
        start: pd.Timestamp | None, end: pd.Timestamp | None,
    ) -> CompiledQuery:
        unit = "week" if q.group_by == "cohort_week" else "month"  # whitelisted: one of two literals
        conds = list(user_conds)
        if start is not None:
            conds.append(f"first_ts >= {p(_naive(start))}")
        if end is not None:
            conds.append(f"first_ts < {p(_naive(end))}")
        bounds = conds[len(user_conds):]
        where = " WHERE " + " AND ".join(conds) if conds else ""
        # Cohort sizes count every user first seen in the range; activity counts sessions that
        # match the row filters (each session row carries its user's first_ts: no join).
        ex = f"min(user_id, {p(q.examples)})" if q.examples else "CAST([] AS VARCHAR[])"
        cohort, period = _period_index(unit, "first_ts"), _period_index(unit, "start")
        label = _period_label(q.group_by, "c")
        ctes.append(f"active AS (SELECT DISTINCT user_id, {cohort} AS c, {period} - {cohort} AS k FROM facts"
                    f"{' WHERE ' + ' AND '.join(bounds) if bounds else ''})")
        select = (
            f"SELECT {label} AS cohort, -1 AS k, count(*) AS n, {ex} AS examples FROM (SELECT *, {cohort} AS c FROM {t['firsts']}{where}) GROUP BY c\n"
            f"UNION ALL SELECT {label}, k, count(*), CAST([] AS VARCHAR[]) FROM active GROUP BY c, k\n"
            "ORDER BY 1, 2"
        )
        return CompiledQuery(_with(ctes, select), p.values, "retention")

    # -- running ---------------------------------------------------------------------------------
    def run(self, query: MetricQuery | Mapping[str, Any]) -> MetricResult:
        """Answer one query.

        Raises:
            MetricQueryError: the query is invalid for this workspace (the message says how to fix it).
            WorkspaceError: the workspace has no events.
        """
        t0 = time.perf_counter()
        q = parse_query(query)
        facts = self._workspace_facts()
        models = self._check(q, facts)
        compiled = self._compile(q, facts, models)
        import duckdb

        cur = self._connection().cursor()
        try:
            records = cur.execute(compiled.sql, compiled.params).fetchall()
        except duckdb.IOException as exc:  # a score table vanished or is damaged; any other error is our bug and propagates
            raise WorkspaceError(f"cannot read a table of workspace '{self.ws.root}' ({exc}); retrain the model or re-create the events") from exc
        finally:
            cur.close()
        start, end, prev = self._window(q, facts)
        notes = self._value_notes(q, facts)
        if compiled.kind == "retention":
            rows, total, groups = self._retention_rows(q, records, facts)
            sorted_by = "cohort ascending"
        else:
            rows, total, groups, sorted_by = self._metric_rows(q, records)
        if q.metric in SCORE_METRICS and total.units > (total.denominator or 0):
            notes.append(
                f"{total.units - (total.denominator or 0)} of {total.units} users in scope have no {q.model} score "
                f"(first seen after {q.model}@{models[q.model].version} was trained)"
            )
        if q.group_by in TIME_GROUPS and rows and facts.last is not None:
            cutoff = facts.last.tz_localize(None).to_pydatetime() + timedelta(seconds=1)
            if end is not None:
                cutoff = min(cutoff, _naive(end))
            last_group = max(r.group for r in rows if r.group)
            if _period_end(last_group, q.group_by) > cutoff:
                notes.append(f"the {q.group_by} {last_group} is partial: it runs past {cutoff:%Y-%m-%d %H:%M} UTC (the end of the data or of the window)")
        if total.units == 0:
            span = f"{facts.first:%Y-%m-%d}..{facts.last:%Y-%m-%d}" if facts.first is not None else "empty"
            notes.append(f"nothing matches these filters (the data spans {span})")
        d = METRICS[q.metric]
        id_kind = {"session": "session", "user": "user", "order": "order", "cohort": "user"}[d.unit]
        ids: list[str] = []
        for r in rows + ([total] if not q.group_by else []):
            ids += [i for i in r.examples if i not in ids]
        until_day = (end - pd.Timedelta(microseconds=1)) if end is not None else None
        citations = Citations(
            models=[m.cite for m in models.values()],
            scores_asof={m.cite: _scores_asof(m.scores_path) for m in models.values()},
            since=start.strftime("%Y-%m-%d") if start is not None else None,
            until=until_day.strftime("%Y-%m-%d") if until_day is not None else None,
            previous_since=prev.strftime("%Y-%m-%d") if prev is not None else None,
            previous_until=(start - pd.Timedelta(microseconds=1)).strftime("%Y-%m-%d") if prev is not None and start is not None else None,
            data_first=facts.first.strftime("%Y-%m-%d") if facts.first is not None else None,
            data_last=facts.last.strftime("%Y-%m-%d") if facts.last is not None else None,
            id_kind=id_kind,
            ids=ids[:20],
        )
        return MetricResult(
            metric=q.metric,
            label=d.label,
            unit=d.unit_label,
            numerator_label=d.numerator,
            denominator_label=d.denominator,
            group_by=q.group_by,
            rows=rows,
            total=total,
            groups=groups,
            sorted_by=sorted_by,
            citations=citations,
            notes=notes,
            sql=compiled.sql,
            params={k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in compiled.params.items()},
            query=q.model_dump(exclude_defaults=True),
            elapsed_ms=round((time.perf_counter() - t0) * 1000, 2),
        )

    def _metric_rows(self, q: MetricQuery, records: list[tuple]) -> tuple[list[MetricRow], MetricRow, int, str]:
        funnel = q.metric == "funnel"
        by: dict[tuple[str, bool], dict[str | None, MetricRow]] = {}
        for rec in records:
            if funnel:
                win, is_total, g, units, num, den, sv, sc, sk, sp, ex = rec
            else:
                win, is_total, g, units, num, den, ex = rec
            row = self._row(q, g, int(units), num, den, list(ex or []))
            if funnel:
                row.steps = _funnel_steps([int(sv), int(sc), int(sk), int(sp)])
            by.setdefault((win, bool(is_total)), {})[g] = row
        empty = self._row(q, None, 0, None, None, [])
        if funnel:
            empty.steps = _funnel_steps([0, 0, 0, 0])
        total = next(iter(by.get(("current", True), {}).values()), empty)
        rows = list(by.get(("current", False), {}).values()) if q.group_by else [total]
        kind = METRICS[q.metric].kind
        if q.group_by and kind in ("count", "sum"):
            for r in rows:
                r.share = _ratio(r.value, total.value)
        if q.compare:
            prev_total = next(iter(by.get(("previous", True), {}).values()), None)
            prev_rows = by.get(("previous", False), {})
            for r in rows if q.group_by else []:
                r.previous = _previous(r, prev_rows.get(r.group), kind)
            total.previous = _previous(total, prev_total, kind)
        sort = q.sort or ("group" if q.group_by in ORDERED_GROUPS else "value")
        desc = q.descending if q.descending is not None else sort == "value"
        if sort == "group":
            named = sorted((r for r in rows if r.group is not None), key=lambda r: r.group or "", reverse=desc)
        else:
            named = sorted((r for r in rows if r.value is not None), key=lambda r: (r.value, r.group or ""), reverse=desc)
        kept = {id(r) for r in named}
        rest = [r for r in rows if id(r) not in kept]  # the NULL group, or rows without a value: last
        rows = named + rest
        groups = len(rows)
        return rows[: q.limit], total, groups, f"{sort} {'descending' if desc else 'ascending'}"

    def _row(self, q: MetricQuery, g: str | None, units: int, num: Any, den: Any, examples: list[str]) -> MetricRow:
        kind = METRICS[q.metric].kind
        den_i = int(den) if den is not None else None
        num_f = float(num) if num is not None else None
        if kind in ("count", "sum"):
            value = (num_f if num_f is not None else 0.0) if units else (0.0 if kind == "count" else None)
        else:
            value = _ratio(num_f, den_i)
        if q.metric in ("users", "sessions", "orders", "score_count_above") and value is not None:
            value = int(value)
        if q.metric in ("revenue", "avg_order_value") and value is not None:
            value = round(value, 2)
        elif q.metric not in ("users", "sessions", "orders", "score_count_above") and value is not None:
            value = round(value, 6)
        if num_f is not None and q.metric in ("revenue", "avg_order_value", "score_mean"):
            num_f = round(num_f, 6)
        numerator = num_f if kind not in ("count", "sum") or q.metric == "score_count_above" else None
        if numerator is not None and float(numerator).is_integer():
            numerator = int(numerator)
        return MetricRow(group=g, value=value, numerator=numerator, denominator=den_i, units=units, examples=examples)

    def _retention_rows(self, q: MetricQuery, records: list[tuple], facts: _WorkspaceFacts) -> tuple[list[MetricRow], MetricRow, int]:
        unit = "week" if q.group_by == "cohort_week" else "month"
        sizes: dict[str, tuple[int, list[str]]] = {}
        cells: dict[str, list[tuple[int, int]]] = {}
        for cohort, k, n, ex in records:
            if k == -1:
                sizes[cohort] = (int(n), list(ex or []))
            else:
                cells.setdefault(cohort, []).append((int(k), int(n)))
        last = facts.last.tz_localize(None) if facts.last is not None else None
        rows = []
        for cohort in sorted(sizes):
            n, ex = sizes[cohort]
            begin = pd.Timestamp(cohort if unit == "week" else cohort + "-01")
            got = dict(cells.get(cohort, []))
            horizon = max(got) if got else 0
            periods = []
            for k in range(horizon + 1):
                pstart = begin + (pd.Timedelta(weeks=k) if unit == "week" else pd.DateOffset(months=k))
                pend = pstart + (pd.Timedelta(weeks=1) if unit == "week" else pd.DateOffset(months=1))
                periods.append(
                    RetentionCell(period=k, start=pstart.strftime("%Y-%m-%d"), active=got.get(k, 0), rate=_ratio(got.get(k, 0), n, 6),
                                  partial=bool(last is not None and pend > last + pd.Timedelta(seconds=1)))
                )
            k1 = got.get(1)
            rows.append(MetricRow(group=cohort, value=_ratio(k1 or 0, n, 6) if horizon >= 1 else None, numerator=k1 or 0,
                                  denominator=n, units=n, periods=periods, examples=ex))
        users = sum(r.units for r in rows)
        retained = sum(int(r.numerator or 0) for r in rows if r.value is not None)
        eligible = sum(r.units for r in rows if r.value is not None)
        total = MetricRow(group=None, value=_ratio(retained, eligible, 6), numerator=retained, denominator=eligible, units=users)
        groups = len(rows)
        desc = bool(q.descending)
        rows = rows[::-1] if desc else rows
        return rows[: q.limit], total, groups

    def _value_notes(self, q: MetricQuery, facts: _WorkspaceFacts) -> list[str]:
        """A filter value the data never shows gives 0 — true, but worth saying, with the values that exist."""
        notes = []
        for col in ("category", "device", "country", "payment"):
            asked = getattr(q, col) or []
            known = {v.lower() for v in facts.values.get(col, [])}
            for v in asked:
                if v.lower() not in known:
                    shown = facts.values.get(col, [])
                    more = f" … ({len(shown)} in all)" if len(shown) > 25 else ""
                    notes.append(f"{col} '{v}' does not occur in this workspace; {col} values: {', '.join(shown[:25])}{more}")
        return notes


def _period_index(unit: str, column: str) -> str:
    """An integer per day, Monday-based week or month of a TIMESTAMP column (``unit`` from a whitelist)."""
    day = f"(epoch_us({column}) // 86400000000)"
    return {"day": day, "week": f"(({day} - 4) // 7)", "month": f"(year({column}) * 12 + month({column}) - 1)"}[unit]  # 1970-01-05 is a Monday


def _period_label(group_by: str | None, column: str) -> str:
    """The text of a period index: YYYY-MM-DD for days and weeks (their Monday), YYYY-MM for months."""
    unit = {"day": "day", "week": "week", "month": "month", "cohort_week": "week", "cohort_month": "month"}.get(group_by or "")
    if unit == "day":
        return f"strftime(DATE '1970-01-01' + CAST({column} AS INTEGER), '%Y-%m-%d')"
    if unit == "week":
        return f"strftime(DATE '1970-01-05' + CAST(7 * {column} AS INTEGER), '%Y-%m-%d')"
    if unit == "month":
        return f"printf('%04d-%02d', {column} // 12, {column} % 12 + 1)"
    return column


def _with(ctes: list[str], select: str) -> str:
    """``WITH`` the CTEs, inlined unless one says ``AS MATERIALIZED``: DuckDB would otherwise
    materialise a CTE read twice (the group and the total), copying every column of its rows."""
    parts = [c if " AS MATERIALIZED (" in c.split("(", 1)[0] + "(" else c.replace(" AS (", " AS NOT MATERIALIZED (", 1) for c in ctes]
    return "WITH " + ",\n".join(parts) + "\n" + select


def _band_label(lo: float, hi: float, closed: bool) -> str:
    return f"[{lo:.2f}, {hi:.2f}{']' if closed else ')'}"


def _ratio(num: float | int | None, den: float | int | None, digits: int | None = None) -> float | None:
    if num is None or not den:
        return None
    r = float(num) / float(den)
    return round(r, digits) if digits is not None else r


def _funnel_steps(counts: list[int]) -> list[FunnelStep]:
    names = ("view", "cart", "checkout", "purchase")
    return [
        FunnelStep(step=names[i], sessions=c, rate_from_previous=_ratio(c, counts[i - 1], 6) if i else None,
                   rate_from_first=_ratio(c, counts[0], 6) if i else None)
        for i, c in enumerate(counts)
    ]


def _previous(cur: MetricRow, prev: MetricRow | None, kind: str) -> PreviousPeriod:
    if prev is None:
        return PreviousPeriod(value=0 if kind in ("count", "sum") else None, units=0,
                              change=cur.value if kind in ("count", "sum") else None)
    change = None if cur.value is None or prev.value is None else round(float(cur.value) - float(prev.value), 6)
    pct = None
    if change is not None and prev.value:
        pct = round(100.0 * change / float(prev.value), 2)
    return PreviousPeriod(value=prev.value, numerator=prev.numerator, denominator=prev.denominator, units=prev.units,
                          change=change, change_pct=pct)


def _period_end(group: str, unit: str | None) -> datetime:
    if unit == "day":
        return datetime.fromisoformat(group) + timedelta(days=1)
    if unit == "week":
        return datetime.fromisoformat(group) + timedelta(weeks=1)
    return (pd.Timestamp(group + "-01") + pd.DateOffset(months=1)).to_pydatetime()


def _scores_asof(path: Path) -> str:
    """When the score table says its scores hold (its ``asof`` column), else the file's time."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["asof"])
        if table.num_rows:
            return pd.Timestamp(table.column("asof")[0].as_py()).strftime("%Y-%m-%d")
    except (KeyError, OSError, ValueError):
        pass
    return time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
