"""The metric query engine against an independent pandas computation on a small demo workspace.

The reference below re-derives every number from the raw events with plain pandas, following the
definitions in ``behavior/query.py``'s docstring; the engine's SQL must agree with it for every
metric, every group-by, the filters and the period comparison.
"""

from __future__ import annotations

import json
import shutil
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.query import (
    GROUP_BYS,
    METRIC_NAMES,
    METRICS,
    MetricQuery,
    MetricQueryError,
    MetricResult,
    QueryEngine,
    day_range,
    parse_query,
)
from shopsight.behavior.workspace import Workspace

STEP_EVENT = {"view": "view", "cart": "add_to_cart", "checkout": "checkout", "purchase": "purchase", "refund": "refund"}
FLAGS = list(STEP_EVENT)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings

    ws = Workspace(tmp_path_factory.mktemp("query") / "ws")
    build_demo_workspace(ws, users=300, days=60, seed=7, progress=False)
    events = ws.load_events()
    # 60 days are too short for the default 30-day churn horizon; the intent model stays untrained.
    train_model(ws, "churn", events=events, settings=TrainSettings(epochs=3), horizon_days=14)
    train_model(ws, "risk", events=events, settings=TrainSettings(epochs=3))
    return ws


@pytest.fixture(scope="module")
def engine(ws: Workspace) -> QueryEngine:
    e = QueryEngine(ws)
    yield e
    e.close()


@pytest.fixture(scope="module")
def ref(ws: Workspace) -> "Reference":
    from shopsight.behavior.models.registry import load_scores

    return Reference(ws.load_events(), {m: load_scores(ws, m) for m in ("churn", "risk")})


# --- the independent pandas reference ---------------------------------------------------------
class Reference:
    """The documented definitions, computed with pandas from the raw events."""

    def __init__(self, events: pd.DataFrame, scores: dict[str, pd.DataFrame]) -> None:
        ev = events.copy()
        ev["ts"] = ev["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        ev["method"] = ev["payment"].str.replace(r"_\d{4}$", "", regex=True)
        self.ev = ev
        flags = pd.DataFrame({s: ev["event"].eq(e) for s, e in STEP_EVENT.items()}, index=ev.index)
        any_step = pd.concat([ev[["session_id"]], flags], axis=1).groupby("session_id").any()
        attrs = ev.groupby("session_id").agg(
            user_id=("user_id", "first"), start=("ts", "min"), device=("device", "first"), country=("country", "first")
        )
        self.sessions = attrs.join(any_step).reset_index()
        self.sessions["category"] = None
        item = ev[ev["category"].notna()]
        item_steps = pd.concat([item[["session_id", "category"]], flags.loc[item.index, ["view", "cart", "purchase", "refund"]]], axis=1)
        per_cat = item_steps.groupby(["session_id", "category"]).any().reset_index()
        self.scats = per_cat.merge(self.sessions[["session_id", "user_id", "start", "device", "country", "checkout"]], on="session_id")
        buys = ev[ev["event"] == "purchase"]
        lines = buys.assign(order_key=buys["order_id"].fillna(buys["session_id"]), amount=buys["price"].fillna(0) * buys["quantity"])
        self.lines = lines[["order_key", "session_id", "category", "method", "amount"]].merge(
            self.sessions[["session_id", "user_id", "start", "device", "country"]], on="session_id"
        )
        rf = ev[ev["event"] == "refund"]
        self.refunds = rf.assign(order_key=rf["order_id"].fillna(rf["session_id"]))[["order_key", "category"]].drop_duplicates()
        self.first_ts = ev.groupby("user_id")["ts"].min()
        self.scores = {m: s.set_index("user_id")["probability"] for m, s in scores.items()}
        self.last = ev["ts"].max()

    # scope ----------------------------------------------------------------------------------
    def windows(self, q: dict) -> tuple[pd.Timestamp | None, pd.Timestamp | None, pd.Timestamp | None]:
        lo = pd.Timestamp(q["since"]) if q.get("since") else None
        hi = pd.Timestamp(q["until"]) + pd.Timedelta(days=1) if q.get("until") else None
        prev = None
        if q.get("compare"):
            hi = hi if hi is not None else self.last.normalize() + pd.Timedelta(days=1)
            prev = lo - (hi - lo)
        return lo, hi, prev

    def scope(self, df: pd.DataFrame, q: dict, *, dates: bool = True) -> pd.DataFrame:
        keep = pd.Series(True, index=df.index)
        if q.get("user_ids"):
            keep &= df["user_id"].isin(q["user_ids"])
        for sf in q.get("scores", []):
            s = self.scores[sf["model"]]
            s = s[(s >= sf.get("min", -1.0)) & (s <= sf.get("max", 2.0))]
            keep &= df["user_id"].isin(s.index)
        lo, hi, prev = self.windows(q)
        df = df.assign(win="current")
        if dates:
            start = prev if prev is not None else lo
            if start is not None:
                keep &= df["start"] >= start
            if hi is not None:
                keep &= df["start"] < hi
            if prev is not None:
                df["win"] = np.where(df["start"] >= lo, "current", "previous")
        for col in ("device", "country", "category"):
            if q.get(col):
                wanted = [v.lower() for v in ([q[col]] if isinstance(q[col], str) else q[col])]
                keep &= df[col].astype("string").str.lower().isin(wanted).fillna(False).astype(bool)
        return df[keep]

    def group(self, df: pd.DataFrame, q: dict) -> pd.Series:
        gb = q.get("group_by")
        if gb in ("category", "device", "country"):
            return df[gb].astype(object)
        if gb == "day":
            return df["start"].dt.strftime("%Y-%m-%d")
        if gb == "week":
            return (df["start"].dt.normalize() - pd.to_timedelta(df["start"].dt.day_of_week, unit="D")).dt.strftime("%Y-%m-%d")
        if gb == "month":
            return df["start"].dt.strftime("%Y-%m")
        if gb in ("cohort_week", "cohort_month"):
            first = df["user_id"].map(self.first_ts)
            if gb == "cohort_month":
                return first.dt.strftime("%Y-%m")
            return (first.dt.normalize() - pd.to_timedelta(first.dt.day_of_week, unit="D")).dt.strftime("%Y-%m-%d")
        if gb == "score_band":
            return df["user_id"].map(self.bands(q.get("band_model") or q["model"], q.get("bands", "deciles")))
        raise AssertionError(gb)

    def bands(self, model: str, bands: Any) -> dict[str, str]:
        s = self.scores[model].sort_index()
        if bands == "deciles":
            order = s.reset_index().sort_values(["probability", "user_id"], kind="stable").reset_index(drop=True)
            n, k = len(order), 10
            q_, r = divmod(n, k)
            i = np.arange(n)
            big = r * (q_ + 1)
            order["d"] = np.where(i < big, i // (q_ + 1) + 1, (i - big) // max(q_, 1) + r + 1)
            lo = order.groupby("d")["probability"].transform("min")
            hi = order.groupby("d")["probability"].transform("max")
            labels = [f"D{d:02d} [{a:.3f}, {b:.3f}]" for d, a, b in zip(order["d"], lo, hi)]
            return dict(zip(order["user_id"], labels))
        out = {}
        for user, p in s.items():
            if p < bands[0] or p > bands[-1]:
                continue
            for a, b in zip(bands[:-1], bands[1:]):
                if p < b or b == bands[-1]:
                    out[user] = f"[{a:.2f}, {b:.2f}{']' if b == bands[-1] else ')'}"
                    break
        return out

    # units ----------------------------------------------------------------------------------
    def units(self, q: dict) -> pd.DataFrame:
        """One row per counted unit (and group): win, g, unit, flags / amount / refunded / prob."""
        metric = q["metric"]
        unit = METRICS[metric].unit
        with_cat = q.get("group_by") == "category" or bool(q.get("category"))
        if unit == "order":
            lines = self.scope(self.lines, q)
            if q.get("payment"):
                lines = lines[lines["method"].str.lower().isin([v.lower() for v in q["payment"]]).fillna(False).astype(bool)]
            keys = ["order_key", "category"] if with_cat else ["order_key"]
            refunded = self.refunds[keys].drop_duplicates().assign(refunded=True)
            lines = lines.merge(refunded, on=keys, how="left")
            lines["refunded"] = lines["refunded"].fillna(False).astype(bool)
            lines["g"] = self.group(lines, q) if q.get("group_by") and q["group_by"] != "payment" else (lines["method"] if q.get("group_by") == "payment" else "*")
            return lines.groupby(["win", "g", "order_key"], dropna=False).agg(amount=("amount", "sum"), refunded=("refunded", "any")).reset_index().rename(columns={"order_key": "unit"})
        facts = self.scope(self.scats if with_cat else self.sessions, q)
        key = "session_id" if unit == "session" else "user_id"
        if q.get("payment") or q.get("group_by") == "payment":
            paid = self.scope(self.lines, q)
            paid = paid[paid["method"].notna()]
            if q.get("payment"):
                paid = paid[paid["method"].str.lower().isin([v.lower() for v in q["payment"]])]
                facts = facts.merge(paid[["win", "user_id"]].drop_duplicates(), on=["win", "user_id"])
        if q.get("group_by") == "payment":
            u = facts.groupby(["win", "user_id"])[FLAGS].any().reset_index()
            u = u.merge(paid[["win", "user_id", "method"]].drop_duplicates(), on=["win", "user_id"], how="left").rename(columns={"method": "g"})
        else:
            facts = facts.assign(g=self.group(facts, q) if q.get("group_by") else "*")
            u = facts.groupby(["win", "g", key], dropna=False)[FLAGS].any().reset_index()
        u = u.rename(columns={key: "unit", "user_id": "unit"})
        for s in q.get("did", []):
            u = u[u[s]]
        for s in q.get("did_not", []):
            u = u[~u[s]]
        if metric.startswith("score_"):
            u = u.assign(prob=u["unit"].map(self.scores[q["model"]]))
        return u

    def numbers(self, u: pd.DataFrame, q: dict) -> dict[str, Any]:
        """units, numerator, denominator and value of one group's unit rows."""
        m = q["metric"]
        t = q.get("threshold", 0.5)
        n = len(u)
        if m in ("users", "sessions", "orders"):
            return {"units": n, "value": n}
        if m == "revenue":
            return {"units": n, "value": round(float(u["amount"].sum()), 2)}
        pairs = {
            "avg_order_value": lambda: (u["amount"].sum(), n),
            "session_conversion": lambda: (u["purchase"].sum(), n),
            "cart_to_purchase": lambda: ((u["cart"] & u["purchase"]).sum(), u["cart"].sum()),
            "cart_abandonment": lambda: ((u["cart"] & ~u["purchase"]).sum(), u["cart"].sum()),
            "refund_rate": lambda: (u["refunded"].sum(), n),
            "funnel": lambda: ((u["view"] & u["cart"] & u["checkout"] & u["purchase"]).sum(), u["view"].sum()),
            "score_mean": lambda: (u["prob"].sum(), u["prob"].count()),
            "score_share_above": lambda: ((u["prob"] >= t).sum(), u["prob"].count()),
            "score_count_above": lambda: ((u["prob"] >= t).sum(), u["prob"].count()),
        }
        num, den = pairs[m]()
        out = {"units": n, "numerator": float(num), "denominator": int(den)}
        out["value"] = int(num) if m == "score_count_above" else (float(num) / den if den else None)
        if m == "funnel":
            v, c, k, p = u["view"], u["view"] & u["cart"], u["view"] & u["cart"] & u["checkout"], u["view"] & u["cart"] & u["checkout"] & u["purchase"]
            out["steps"] = [int(v.sum()), int(c.sum()), int(k.sum()), int(p.sum())]
        return out

    def expected(self, q: dict, win: str = "current") -> tuple[dict[Any, dict], dict]:
        """Per group and total numbers for window ``win``."""
        groups: dict[Any, dict] = {}
        if q.get("group_by"):
            u = self.units(q)
            u = u[u["win"] == win]
            for g, part in u.groupby("g", dropna=False):
                groups[None if pd.isna(g) else g] = self.numbers(part, q)
        tq = {k: v for k, v in q.items() if k != "group_by"}
        tu = self.units(tq)
        return groups, self.numbers(tu[tu["win"] == win], q)


def close(a: Any, b: Any, *, money: bool = False) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= (0.011 if money else 1e-5 * max(1.0, abs(float(b))))


def assert_row(row: Any, exp: dict, metric: str) -> None:
    money = metric in ("revenue", "avg_order_value")
    assert row.units == exp["units"], (row.group, row.units, exp)
    assert close(row.value, exp["value"], money=money), (row.group, row.value, exp)
    if "denominator" in exp:
        assert row.denominator == exp["denominator"], (row.group, row.denominator, exp)
        assert close(row.numerator, exp["numerator"], money=money), (row.group, row.numerator, exp)
    if "steps" in exp:
        assert [s.sessions for s in row.steps] == exp["steps"]


def assert_matches(result: MetricResult, ref: Reference, q: dict) -> None:
    groups, total = ref.expected(q)
    assert_row(result.total, total, q["metric"])
    if q.get("group_by"):
        assert result.groups == len(groups), (sorted(map(str, groups)), [r.group for r in result.rows])
        assert len(result.rows) == min(len(groups), q.get("limit", 10))
        for row in result.rows:
            assert row.group in groups, (row.group, list(groups))
            assert_row(row, groups[row.group], q["metric"])
    else:
        assert len(result.rows) == 1 and result.rows[0] is result.total


def quantile(ref: Reference, model: str, q: float) -> float:
    return float(np.round(ref.scores[model].quantile(q), 6))


# --- the questions an analyst asks ------------------------------------------------------------------
def test_overall_cart_to_purchase_rate(engine, ref):
    r = engine.run({"metric": "cart_to_purchase"})
    s = ref.sessions
    carted = s[s["cart"]]
    assert r.total.denominator == len(carted) and r.total.numerator == int(carted["purchase"].sum())
    assert r.total.value == pytest.approx(carted["purchase"].mean(), abs=1e-6)
    assert r.headline() == f"{r.total.value:.1%}: {int(carted['purchase'].sum()):,} carted sessions that purchased of {len(carted):,} carted sessions"
    assert set(r.total.examples) <= set(carted.loc[carted["purchase"], "session_id"]) and len(r.total.examples) == 3


def test_users_who_bought_something_last_month(engine, ref):
    r = engine.run({"metric": "users", "purchased": True, "since": "2026-02-01", "until": "2026-02-28"})
    s = ref.sessions
    feb = s[(s["start"] >= "2026-02-01") & (s["start"] < "2026-03-01") & s["purchase"]]
    assert r.total.value == feb["user_id"].nunique() > 0
    assert r.citations.since == "2026-02-01" and r.citations.until == "2026-02-28"
    assert r.citations.id_kind == "user" and set(r.citations.ids) <= set(feb["user_id"])


def test_users_who_added_to_cart_but_never_checked_out_count_and_list(engine, ref):
    r = engine.run({"metric": "users", "did": ["cart"], "did_not": ["checkout"], "examples": 20})
    per_user = ref.sessions.groupby("user_id")[["cart", "checkout"]].any()
    expected = sorted(per_user[per_user["cart"] & ~per_user["checkout"]].index)
    assert r.total.value == len(expected) > 20
    assert r.total.examples == expected[:20]


def test_category_with_the_highest_cart_abandonment(engine, ref):
    q = {"metric": "cart_abandonment", "group_by": "category", "limit": 20}
    r = engine.run(q)
    c = ref.scats[ref.scats["cart"]]
    by = c.groupby("category")["purchase"].agg(lambda p: (~p).mean())
    assert r.rows[0].group == by.idxmax()
    assert r.rows[0].value == pytest.approx(by.max(), abs=1e-6)
    assert [row.value for row in r.rows if row.value is not None] == sorted((row.value for row in r.rows if row.value is not None), reverse=True)
    assert_matches(r, ref, q)


def test_share_of_high_risk_users_paying_with_a_gift_card(engine, ref):
    t = quantile(ref, "risk", 0.8)
    base = {"metric": "users", "scores": [{"model": "risk", "min": t}]}
    by = engine.run({**base, "group_by": "payment"})
    assert_matches(by, ref, {**base, "group_by": "payment"})
    high = set(ref.scores["risk"][ref.scores["risk"] >= t].index) & set(ref.sessions["user_id"])
    assert by.total.value == len(high) > 0
    paid = ref.lines[ref.lines["user_id"].isin(high)]
    for row in by.rows:
        if row.group is not None:
            assert row.share == pytest.approx(paid.loc[paid["method"] == row.group, "user_id"].nunique() / len(high))
    assert "gift_card" not in {row.group for row in by.rows}  # the demo shop has no gift cards
    gift = engine.run({**base, "payment": "gift_card"})
    assert gift.total.value == 0
    assert any("payment 'gift_card' does not occur" in n and "promo" in n for n in gift.notes)
    promo = engine.run({**base, "payment": "promo"})
    assert promo.total.value == paid.loc[paid["method"] == "promo", "user_id"].nunique()


def test_weekly_conversion_over_the_last_two_months(engine, ref):
    q = {"metric": "session_conversion", "group_by": "week", "since": "2026-01-05", "until": "2026-03-05", "limit": 20}
    r = engine.run(q)
    assert [row.group for row in r.rows] == sorted(row.group for row in r.rows) and r.rows[0].group == "2026-01-05"
    assert_matches(r, ref, q)
    assert any("week 2026-03-02 is partial" in n for n in r.notes)


@pytest.mark.parametrize("threshold", ["0.8", "q90"])
def test_how_many_users_have_a_fraud_score_above(engine, ref, threshold):
    t = 0.8 if threshold == "0.8" else quantile(ref, "risk", 0.9)
    r = engine.run({"metric": "score_count_above", "model": "risk", "threshold": t})
    risk = ref.scores["risk"]
    assert r.total.value == int((risk >= t).sum()) and r.total.denominator == len(risk)
    if threshold == "q90":
        assert r.total.value >= 30
    assert r.citations.models == ["risk@v1"] and r.citations.scores_asof["risk@v1"] == "2026-03-06"


@pytest.mark.parametrize("threshold", ["0.5", "median"])
def test_average_order_value_of_users_likely_to_churn(engine, ref, threshold):
    t = 0.5 if threshold == "0.5" else quantile(ref, "churn", 0.5)
    r = engine.run({"metric": "avg_order_value", "scores": [{"model": "churn", "min": t}]})
    churners = ref.scores["churn"][ref.scores["churn"] >= t].index
    buys = ref.ev[(ref.ev["event"] == "purchase") & ref.ev["user_id"].isin(churners)]
    revenue = float((buys["price"].fillna(0) * buys["quantity"]).sum())
    orders = buys["order_id"].nunique()
    assert r.total.denominator == orders > 0
    assert r.total.value == pytest.approx(revenue / orders, abs=0.006)
    assert r.citations.models == ["churn@v1"] and r.citations.id_kind == "order"


def test_retention_of_the_january_cohort(engine, ref):
    r = engine.run({"metric": "retention", "group_by": "cohort_month", "since": "2026-01-01", "until": "2026-01-31"})
    first = ref.first_ts
    january = first[(first >= "2026-01-01") & (first < "2026-02-01")].index
    assert [row.group for row in r.rows] == ["2026-01"] and r.rows[0].units == len(january)
    s = ref.sessions[ref.sessions["user_id"].isin(january)]
    months = (s["start"].dt.year - 2026) * 12 + s["start"].dt.month - 1
    active = s.assign(k=months).groupby("k")["user_id"].nunique()
    cells = {c.period: c.active for c in r.rows[0].periods}
    assert cells == {int(k): int(v) for k, v in active.items()} and cells[0] == len(january)
    assert r.rows[0].value == pytest.approx(active[1] / len(january), abs=1e-6)
    assert [c.partial for c in r.rows[0].periods] == [False, False, True]  # March 2026 runs past the data


# --- every metric, every group-by ------------------------------------------------------------------
def _spec(metric: str, group_by: str | None, ref: Reference) -> dict:
    q: dict[str, Any] = {"metric": metric, "limit": 20}
    if group_by:
        q["group_by"] = group_by
    if metric.startswith("score_"):
        q["model"] = "churn"
        if metric != "score_mean":
            q["threshold"] = quantile(ref, "churn", 0.6)
    if group_by == "score_band":
        q["band_model"] = "risk"
    return q


VALID = [
    (m, g)
    for m in METRIC_NAMES
    if m != "retention"
    for g in (None, *GROUP_BYS)
    if not (g == "payment" and METRICS[m].unit == "session")
]


@pytest.mark.parametrize(("metric", "group_by"), VALID)
def test_metric_by_group_matches_pandas(engine, ref, metric, group_by):
    q = _spec(metric, group_by, ref)
    assert_matches(engine.run(q), ref, q)


@pytest.mark.parametrize("metric", ["session_conversion", "funnel", "users", "score_share_above"])
@pytest.mark.parametrize("group_by", ["category", "device"])
def test_payment_cannot_split_session_metrics_but_other_metrics_match(engine, ref, metric, group_by):
    q = {**_spec(metric, group_by, ref), "payment": ["visa", "apple_pay"]}
    if METRICS[metric].unit == "session":
        with pytest.raises(MetricQueryError, match="payment is known only at checkout"):
            engine.run(q)
    else:
        assert_matches(engine.run(q), ref, q)


FILTERS = [
    {"since": "2026-01-20", "until": "2026-02-10"},
    {"since": "2026-02-01T12:00:00", "until": "2026-02-02T12:00:00"},
    {"category": ["toys", "Books"]},
    {"device": "Mobile", "country": ["US", "de"]},
    {"did": ["view", "cart"], "did_not": ["purchase"]},
    {"purchased": False},
    {"scores": [{"model": "risk", "max": 0.02}, {"model": "churn", "min": 0.6}]},
    {"user_ids": ["u00001", "u00003", "u00005", "u00011", "u00054", "nobody"]},
]


@pytest.mark.parametrize("metric", ["users", "sessions", "session_conversion", "cart_abandonment", "funnel", "score_mean", "orders", "revenue", "refund_rate"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "+".join(f))
def test_filters_match_pandas(engine, ref, metric, filters):
    if METRICS[metric].unit == "order" and ({"did", "did_not", "purchased"} & set(filters)):
        with pytest.raises(MetricQueryError, match="do not apply to order metrics"):
            engine.run({"metric": metric, **filters})
        return
    q = {**_spec(metric, "category" if "category" in filters else "week", ref), **filters}
    ref_q = dict(q)
    if "purchased" in ref_q:
        ref_q[("did" if ref_q.pop("purchased") else "did_not")] = ["purchase"]
    for col in ("device", "category"):
        if isinstance(ref_q.get(col), str):
            ref_q[col] = [ref_q[col]]
    if "T" in str(q.get("since", "")):  # a date and time: the engine includes that instant, the reference below too
        groups, total = _instant_reference(ref, ref_q)
        r = engine.run(q)
        assert_row(r.total, total, metric)
        return
    assert_matches(engine.run(q), ref, ref_q)


def _instant_reference(ref: Reference, q: dict) -> tuple[dict, dict]:
    lo, hi = pd.Timestamp(q["since"]), pd.Timestamp(q["until"]) + pd.Timedelta(microseconds=1)
    saved = ref.windows
    ref.windows = lambda q_: (lo, hi, None)  # type: ignore[method-assign]
    try:
        return ref.expected({k: v for k, v in q.items() if k not in ("since", "until")})
    finally:
        ref.windows = saved  # type: ignore[method-assign]


def test_fixed_score_bands(engine, ref):
    edges = [0.0, quantile(ref, "churn", 0.3), quantile(ref, "churn", 0.7), 1.0]
    q = {"metric": "users", "group_by": "score_band", "band_model": "churn", "bands": edges}
    r = engine.run(q)
    assert_matches(r, ref, q)
    assert [row.group for row in r.rows] == [f"[{edges[0]:.2f}, {edges[1]:.2f})", f"[{edges[1]:.2f}, {edges[2]:.2f})", f"[{edges[2]:.2f}, 1.00]"]


def test_deciles_split_the_score_table_in_ten(engine, ref):
    r = engine.run({"metric": "score_mean", "model": "risk", "group_by": "score_band"})
    assert [row.group[:3] for row in r.rows] == [f"D{i:02d}" for i in range(1, 11)]
    assert [row.units for row in r.rows] == [30] * 10
    means = [row.value for row in r.rows]
    assert means == sorted(means)


def test_weekly_cohort_retention_matches_pandas(engine, ref):
    r = engine.run({"metric": "retention", "group_by": "cohort_week", "limit": 20, "device": "mobile"})
    first = ref.first_ts
    cohort = (first.dt.normalize() - pd.to_timedelta(first.dt.day_of_week, unit="D"))
    s = ref.sessions[ref.sessions["device"] == "mobile"]
    week = s["start"].dt.normalize() - pd.to_timedelta(s["start"].dt.day_of_week, unit="D")
    k = ((week - s["user_id"].map(cohort)).dt.days // 7)
    active = s.assign(c=s["user_id"].map(cohort).dt.strftime("%Y-%m-%d"), k=k).groupby(["c", "k"])["user_id"].nunique()
    sizes = cohort.dt.strftime("%Y-%m-%d").value_counts()
    assert {row.group: row.units for row in r.rows} == sizes.to_dict()
    for row in r.rows:
        got = {c.period: c.active for c in row.periods if c.active}
        assert got == {int(kk): int(v) for (c, kk), v in active.items() if c == row.group}
    assert r.total.units == len(first)


# --- period comparison ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["revenue", "session_conversion", "users", "score_share_above", "refund_rate"])
def test_compare_with_the_previous_period_of_equal_length(engine, ref, metric):
    q = {**_spec(metric, "category", ref), "since": "2026-02-05", "until": "2026-03-04", "compare": True}
    r = engine.run(q)
    assert r.citations.previous_since == "2026-01-08" and r.citations.previous_until == "2026-02-04"
    assert_matches(r, ref, q)
    prev_groups, prev_total = ref.expected(q, win="previous")
    money = metric == "revenue"
    assert close(r.total.previous.value, prev_total["value"], money=money)
    assert close(r.total.previous.change, r.total.value - prev_total["value"], money=money)
    for row in r.rows:
        assert close(row.previous.value, prev_groups[row.group]["value"], money=money)


def test_compare_without_until_ends_at_the_last_day_of_data(engine, ref):
    r = engine.run({"metric": "sessions", "since": "2026-02-20", "compare": True})
    assert r.citations.until == "2026-03-05" and r.citations.previous_since == "2026-02-06"
    s = ref.sessions
    assert r.total.previous.value == int(((s["start"] >= "2026-02-06") & (s["start"] < "2026-02-20")).sum())


# --- bad specs a planner can fix ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"metric": "click_through"}, "metric", ["'click_through' is not allowed", "session_conversion", "retention"]),
        ({"metric": "users", "group_by": "brand"}, "group_by", ["'brand' is not allowed", "category", "score_band"]),
        ({"metric": "score_share_above", "model": "risk", "threshold": 1.5}, "threshold", ["1.5 is outside [0, 1]"]),
        ({"metric": "users", "scores": [{"model": "risk", "min": -0.1}]}, "scores.0.min", ["-0.1 is outside [0, 1]"]),
        ({"metric": "users", "since": "2026-03-01", "until": "2026-02-01"}, "since", ["date range is empty"]),
        ({"metric": "users", "since": "last tuesday"}, "since", ["not a date", "YYYY-MM-DD"]),
        ({"metric": "score_mean"}, "model", ["needs `model`", "churn, risk, intent"]),
        ({"metric": "users", "did": ["cart"], "did_not": ["cart"]}, "did", ["both did and did_not"]),
        ({"metric": "users", "limit": 50}, "limit", ["outside 1–20"]),
        ({"metric": "users", "colour": "red"}, "colour", ["unknown field 'colour'"]),
        ({"metric": "retention", "group_by": "device"}, "group_by", ["cohort_week or cohort_month"]),
        ({"metric": "users", "compare": True}, "since", ["compare needs `since`"]),
        ({"metric": "users", "group_by": "week", "since": "2026-02-01", "compare": True}, "compare", ["cannot match week groups"]),
    ],
)
def test_invalid_specs_name_what_is_allowed(engine, spec, field, words):
    with pytest.raises(MetricQueryError) as info:
        engine.run(spec)
    assert info.value.field == field
    for w in words:
        assert w in str(info.value)
    assert json.dumps(info.value.to_dict())


def test_a_score_metric_whose_model_is_not_trained(engine):
    with pytest.raises(MetricQueryError) as info:
        engine.run({"metric": "score_mean", "model": "intent"})
    msg = str(info.value)
    assert "no intent scores" in msg and "shopsight train intent" in msg and "churn@v1, risk@v1" in msg
    assert info.value.allowed == ["churn", "risk"]
    with pytest.raises(MetricQueryError, match="no intent scores"):
        engine.run({"metric": "users", "scores": [{"model": "intent", "min": 0.5}]})


def test_group_by_a_column_the_workspace_lacks(tmp_path, ws):
    events = ws.load_events().drop(columns=["payment", "order_id"])
    bare = Workspace(tmp_path / "bare")
    bare.save_events(events)
    with QueryEngine(bare) as e:
        with pytest.raises(MetricQueryError) as info:
            e.run({"metric": "orders", "group_by": "payment"})
        assert "no 'payment' column" in str(info.value) and "category" in info.value.allowed and "payment" not in info.value.allowed
        with pytest.raises(MetricQueryError, match="drop the payment filter"):
            e.run({"metric": "users", "payment": "visa"})
        with pytest.raises(MetricQueryError, match="refund_rate needs order ids"):
            e.run({"metric": "refund_rate"})
        # without order ids a purchase session is the order
        r = e.run({"metric": "orders"})
        assert r.total.value == events.loc[events["event"] == "purchase", "session_id"].nunique()
        assert "payment" not in e.describe()["group_by"]


# --- safety, shape, freshness ------------------------------------------------------------------------
def test_values_are_parameters_never_sql_text(engine):
    hostile = "x'); DROP TABLE sessions_1; --"
    q = {"metric": "users", "category": [hostile], "country": "Robert'); --", "user_ids": ["u00001' OR '1'='1"], "since": "2026-02-01"}
    c = engine.compile(q)
    for value in (hostile, "Robert'); --", "u00001' OR '1'='1", "2026-02-01"):
        assert value.lower() not in c.sql.lower()
    assert [hostile.lower()] in c.params.values()
    r = engine.run(q)
    assert r.total.value == 0 and engine.run({"metric": "users"}).total.value == 300


def test_result_is_json_with_sql_citations_and_examples(engine, ref):
    r = engine.run({"metric": "cart_abandonment", "group_by": "device", "examples": 2, "scores": [{"model": "risk", "min": 0.0}]})
    d = json.loads(json.dumps(r.model_dump()))
    assert d["sql"].startswith("WITH ") and "$p" in d["sql"] and d["params"]
    assert d["citations"]["models"] == ["risk@v1"] and d["citations"]["id_kind"] == "session"
    assert d["citations"]["data_first"] == "2026-01-05" and d["citations"]["data_last"] == "2026-03-05"
    assert d["numerator_label"] == "carted sessions without a purchase" and d["denominator_label"] == "carted sessions"
    s = ref.sessions.set_index("session_id")
    for row in r.rows:
        assert len(row.examples) == 2
        for sid in row.examples:  # examples come from the numerator: carted, not purchased, on that device
            assert s.loc[sid, "cart"] and not s.loc[sid, "purchase"] and s.loc[sid, "device"] == row.group
    assert set(d["citations"]["ids"]) == {i for row in r.rows for i in row.examples}
    assert parse_query(d["query"]) == parse_query({"metric": "cart_abandonment", "group_by": "device", "examples": 2, "scores": [{"model": "risk", "min": 0.0}]})


def test_sort_and_limit(engine, ref):
    q = {"metric": "sessions", "group_by": "country", "limit": 3}
    r = engine.run(q)
    counts = ref.sessions["country"].value_counts()
    assert [row.group for row in r.rows] == list(counts.index[:3]) and r.groups == len(counts)
    asc = engine.run({**q, "sort": "group", "descending": False})
    assert [row.group for row in asc.rows] == sorted(counts.index)[:3]
    assert sum(row.share for row in engine.run({**q, "limit": 20}).rows) == pytest.approx(1.0)


def test_one_engine_serves_threads(engine):
    specs = [{"metric": "cart_to_purchase"}, {"metric": "users", "group_by": "device"}, {"metric": "revenue", "group_by": "month"}]
    expected = [engine.run(s).model_dump(exclude={"elapsed_ms"}) for s in specs]
    got: list[Any] = [None] * 12
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got[i] = engine.run(specs[i % 3]).model_dump(exclude={"elapsed_ms"})
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [expected[i % 3] for i in range(12)]


def test_new_events_are_seen_at_once(tmp_path, ws):
    copy = Workspace(tmp_path / "copy")
    copy.root.mkdir()
    shutil.copy(ws.events_path, copy.events_path)
    with QueryEngine(copy) as e:
        before = e.run({"metric": "users"}).total.value
        events = copy.load_events()
        copy.save_events(events[events["user_id"] != "u00001"])
        assert e.run({"metric": "users"}).total.value == before - 1
        copy.save_events(events[~events["user_id"].isin(["u00001", "u00002"])])  # a third build drops the first one's tables
        assert e.run({"metric": "users"}).total.value == before - 2


def test_no_events_is_a_workspace_error(tmp_path):
    from shopsight.behavior.workspace import WorkspaceError

    with QueryEngine(Workspace(tmp_path / "empty")) as e, pytest.raises(WorkspaceError, match="shopsight demo"):
        e.run({"metric": "users"})


def test_day_range_is_on_or_after_since_and_through_the_whole_until_day():
    start, end = day_range("2026-02-01", "2026-02-28")
    assert start == pd.Timestamp("2026-02-01", tz="UTC") and end == pd.Timestamp("2026-03-01", tz="UTC")
    _, end = day_range(None, "2026-02-28T10:00:00+02:00")
    assert end == pd.Timestamp("2026-02-28T08:00:00.000001", tz="UTC")
    assert day_range(None, None) == (None, None)
    with pytest.raises(MetricQueryError, match="empty"):
        day_range("2026-02-02", "2026-02-01")


def test_purchased_is_shorthand_for_did_purchase():
    assert MetricQuery(metric="users", purchased=True).did == ["purchase"]
    assert MetricQuery(metric="users", purchased=False).did_not == ["purchase"]


def test_totals_are_the_question_without_the_group(tmp_path, ws):
    events = ws.load_events()
    # a login-and-search session that touches no category
    extra = events.iloc[[0, 0]].copy()
    extra["session_id"] = "u00001-s9999"
    extra["event"] = ["login", "search"]
    extra["category"] = None
    extra["item_id"] = None
    extra["ts"] = [pd.Timestamp("2026-02-10 10:00", tz="UTC"), pd.Timestamp("2026-02-10 10:01", tz="UTC")]
    copy = Workspace(tmp_path / "extra")
    copy.save_events(pd.concat([events, extra], ignore_index=True))
    with QueryEngine(copy) as e:
        plain = e.run({"metric": "sessions"})
        grouped = e.run({"metric": "sessions", "group_by": "category", "limit": 20})
        assert grouped.total.value == plain.total.value == events["session_id"].nunique() + 1
        assert e.run({"metric": "session_conversion", "group_by": "category"}).total.denominator == plain.total.value
        toys = e.run({"metric": "sessions", "group_by": "category", "category": "Toys"})
        assert [r.group for r in toys.rows] == ["Toys"] and toys.total.value == toys.rows[0].value
