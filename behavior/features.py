"""Sessions and per-user features as pure pandas functions (DataFrame in, DataFrame out).

Every function here works on the rows of any subset of users, so the same code runs per
user group on Spark (``groupBy("user_id").applyInPandas(user_features, schema)``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

SESSION_GAP = pd.Timedelta(minutes=30)


def sorted_by_user_then_time(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` is already in the order ``sort_values(["user_id", "ts"], kind="stable")`` gives it."""
    u = frame["user_id"].to_numpy(dtype=object, na_value=None)
    if any(x is None for x in u):
        return False
    try:
        same = u[1:] == u[:-1]
        if not (same | (u[1:] > u[:-1])).all():
            return False
    except TypeError:  # ids of mixed types: let the sort decide
        return False
    ts = frame["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    return bool((~same | (ts[1:] >= ts[:-1])).all())


def sessionize(events: pd.DataFrame, gap: pd.Timedelta = SESSION_GAP, after: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fill ``session_id``: keep ids the source gave; otherwise a new session after ``gap`` idle.

    Session ids made here are ``"<user_id>-s<k>"`` with k counting the user's sessions from 1
    in time order, so they are stable for the same events. Sessions run across midnight
    and are computed on UTC time, so DST changes do not split them. Events with identical
    timestamps keep their input order.

    Args:
        after: Events stored before these (earlier ingest batches; ``user_id, ts, session_id``).
            A user's numbering then continues after their sessions there, and their first new
            event joins their last stored session when it comes less than ``gap`` after it, so
            a session that spans two batches keeps one id and no id means two sessions.
    """
    # (rows already in that order, as a `shopsight watch` poll's are: no sort to pay)
    df = (events if sorted_by_user_then_time(events) else events.sort_values(["user_id", "ts"], kind="stable")).reset_index(drop=True)
    missing = df["session_id"].isna()
    if not missing.any():
        return df
    sub = df.loc[missing, ["user_id", "ts"]]
    # With string ids, comparing the first row to the shifted NA gives NA: it starts a session.
    new_user = sub["user_id"].ne(sub["user_id"].shift()).fillna(True).astype(bool)
    idle = (sub["ts"].diff() > gap).fillna(False).astype(bool)
    starts = (new_user | idle).astype("int64")
    k = starts.groupby(sub["user_id"], sort=False).cumsum()
    prior = made_sessions(after) if after is not None and len(after) else None
    if prior is not None and len(prior):  # (stored sessions that all came from the source: nothing to continue)
        users = sub["user_id"].astype(str)
        made = users.map(prior["k"]).fillna(0).astype("int64")
        last = pd.to_datetime(users.map(prior["last_ts"]), utc=True)
        first = sub["ts"].groupby(sub["user_id"], sort=False).transform("min")
        joins = ((first >= last) & (first - last <= gap)).fillna(False).astype("int64")
        k = k + made - joins
    df.loc[missing, "session_id"] = sub["user_id"].astype(str) + "-s" + k.astype(str)
    df["session_id"] = df["session_id"].astype("string")
    return df


def made_sessions(events: pd.DataFrame) -> pd.DataFrame:
    """Per user, of the session ids :func:`sessionize` made: how many (``k``, the highest) and when the last one ended."""
    sid = events["session_id"].astype("string")
    users = events["user_id"].astype("string")
    k = pd.to_numeric(sid.str.extract(r"-s(\d+)$", expand=False), errors="coerce")
    made = (users + "-s" + k.astype("Int64").astype("string")).eq(sid).fillna(False).astype(bool)
    d = pd.DataFrame({"user_id": users[made].astype(str), "k": k[made].astype("int64"), "ts": events["ts"][made]})
    if d.empty:
        return pd.DataFrame({"k": pd.Series(dtype="int64"), "last_ts": pd.Series(dtype="datetime64[ns, UTC]")})
    top = d.groupby("user_id")["k"].transform("max")
    last = d[d["k"] == top].groupby("user_id").agg(k=("k", "max"), last_ts=("ts", "max"))
    return last


def session_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per session: user, start, end, minutes, counts per event, revenue, categories."""
    df = events
    revenue = (df["price"].fillna(0) * df["quantity"]).where(df["event"] == "purchase", 0.0)
    g = df.assign(_revenue=revenue).groupby("session_id", sort=False)
    out = g.agg(
        user_id=("user_id", "first"),
        start=("ts", "min"),
        end=("ts", "max"),
        n_events=("event", "size"),
        revenue=("_revenue", "sum"),
    )
    counts = pd.crosstab(df["session_id"], df["event"])
    for ev in ("view", "search", "add_to_cart", "checkout", "purchase", "refund", "review"):
        out[f"n_{ev}"] = counts[ev].reindex(out.index).fillna(0).astype("int64") if ev in counts else 0
    out["purchased"] = out["n_purchase"] > 0
    out["minutes"] = (out["end"] - out["start"]).dt.total_seconds() / 60.0
    # Plain Python lists in an object column: pandas 3 would otherwise infer an Arrow list
    # dtype, whose reindex/apply round trip loses the values.
    cats = df.dropna(subset=["category"]).groupby("session_id", sort=False)["category"]
    by_session = {sid: sorted(set(map(str, vals))) for sid, vals in cats}
    out["categories"] = pd.Series([by_session.get(sid, []) for sid in out.index], index=out.index, dtype=object)
    for opt in ("device", "country"):
        if opt in df.columns:
            out[opt] = g[opt].first()
    return out.reset_index()


def user_features(events: pd.DataFrame, asof: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per-user RFM and behaviour features from events strictly before ``asof``.

    ``asof`` defaults to just after the last event. Recency and windows count back from it.
    Columns: recency_days, tenure_days, frequency (distinct purchase days), orders,
    monetary, avg_order_value, n_sessions, n_events, views/carts/purchases, cart and
    purchase rates, events in the last 7/30 days, velocity (events per active day),
    distinct devices/countries, refund_rate, top_category and its share.
    """
    if asof is None:
        asof = events["ts"].max() + pd.Timedelta(seconds=1)
    df = events[events["ts"] < asof]
    if df.empty:
        return pd.DataFrame(index=pd.Index([], name="user_id"))
    ev = df["event"]
    is_buy = ev == "purchase"
    amount = (df["price"].fillna(0) * df["quantity"]).where(is_buy, 0.0)
    day = df["ts"].dt.floor("D")
    g = df.assign(
        _amount=amount,
        _buy=is_buy,
        _view=ev == "view",
        _cart=ev == "add_to_cart",
        _refund=ev == "refund",
        _day=day,
        _buy_day=day.where(is_buy),
        _last7=df["ts"] >= asof - pd.Timedelta(days=7),
        _last30=df["ts"] >= asof - pd.Timedelta(days=30),
    ).groupby("user_id", sort=True)
    f = g.agg(
        first_ts=("ts", "min"),
        last_ts=("ts", "max"),
        n_events=("event", "size"),
        n_sessions=("session_id", "nunique"),
        views=("_view", "sum"),
        carts=("_cart", "sum"),
        purchases=("_buy", "sum"),
        refunds=("_refund", "sum"),
        monetary=("_amount", "sum"),
        frequency=("_buy_day", "nunique"),
        active_days=("_day", "nunique"),
        events_7d=("_last7", "sum"),
        events_30d=("_last30", "sum"),
    )
    last_buy = df[is_buy].groupby("user_id")["ts"].max()
    f["recency_days"] = ((asof - last_buy.reindex(f.index)).dt.total_seconds() / 86400).astype("float64")
    f["days_since_last_event"] = (asof - f["last_ts"]).dt.total_seconds() / 86400
    f["tenure_days"] = (asof - f["first_ts"]).dt.total_seconds() / 86400
    orders = df[is_buy]
    if "order_id" in orders.columns and orders["order_id"].notna().any():
        f["orders"] = orders.groupby("user_id")["order_id"].nunique().reindex(f.index).fillna(0)
    else:
        f["orders"] = orders.groupby("user_id")["session_id"].nunique().reindex(f.index).fillna(0)
    f["avg_order_value"] = (f["monetary"] / f["orders"].where(f["orders"] > 0)).fillna(0.0)
    f["cart_rate"] = f["carts"] / f["views"].clip(lower=1)
    f["purchase_rate"] = f["purchases"] / f["n_sessions"].clip(lower=1)
    f["refund_rate"] = f["refunds"] / f["purchases"].clip(lower=1)
    f["velocity"] = f["n_events"] / f["active_days"].clip(lower=1)
    for opt in ("device", "country"):
        if opt in df.columns:
            f[f"n_{opt}s"] = g[opt].nunique().astype("int64")
        else:
            f[f"n_{opt}s"] = 0
    cats = df.dropna(subset=["category"])
    if not cats.empty:
        mix = pd.crosstab(cats["user_id"], cats["category"], normalize="index")
        f["top_category"] = mix.idxmax(axis=1).reindex(f.index)
        f["top_category_share"] = mix.max(axis=1).reindex(f.index).fillna(0.0)
    else:
        f["top_category"] = pd.NA
        f["top_category_share"] = 0.0
    int_cols = ["views", "carts", "purchases", "refunds", "events_7d", "events_30d", "frequency", "active_days"]
    f[int_cols] = f[int_cols].astype("int64")
    return f


def category_mix(events: pd.DataFrame) -> pd.DataFrame:
    """Share of each user's events per category (rows: users, columns: categories)."""
    cats = events.dropna(subset=["category"])
    return pd.crosstab(cats["user_id"], cats["category"], normalize="index")


def summarize_events(events: pd.DataFrame) -> dict:
    """A compact description of an event table for `shopsight demo` / `ingest` / manifests."""
    counts = events["event"].value_counts()
    buys = events[events["event"] == "purchase"]
    return {
        "events": int(len(events)),
        "users": int(events["user_id"].nunique()),
        "sessions": int(events["session_id"].nunique()),
        "items": int(events["item_id"].nunique()),
        "categories": int(events["category"].nunique()),
        "first_event": events["ts"].min().isoformat(),
        "last_event": events["ts"].max().isoformat(),
        "event_counts": {str(k): int(v) for k, v in counts.items()},
        "revenue": round(float((buys["price"].fillna(0) * buys["quantity"]).sum()), 2),
    }


RFM_WINDOWS: tuple[int, ...] = (7, 14, 30, 60, 90)


def top_categories(events: pd.DataFrame, k: int = 8) -> list[str]:
    """The ``k`` most frequent categories among purchases (all events if nothing was bought).

    Fix the list on training data and pass it to ``rfm_features`` so every snapshot gets the
    same share columns.
    """
    buys = events[events["event"] == "purchase"]
    return top_categories_from(buys["category"].dropna().astype(str).value_counts(),
                               lambda: events["category"].dropna().astype(str).value_counts(), k)


def top_categories_from(purchase_counts: pd.Series, event_counts: Callable[[], pd.Series], k: int = 8) -> list[str]:
    """``top_categories`` from counts, most frequent first (Spark counts a whole table's).

    ``event_counts`` (every event's categories) is asked for only when no purchase has a category.
    """
    src = purchase_counts if len(purchase_counts) else event_counts()
    return [str(c) for c in src.index[:k]]


def rfm_features(
    events: pd.DataFrame,
    asof: pd.Timestamp,
    *,
    windows: tuple[int, ...] = RFM_WINDOWS,
    categories: list[str] | None = None,
) -> pd.DataFrame:
    """RFM-style features per user from events strictly before ``asof`` — the one feature set
    the baselines (logistic regression, LightGBM) and the torch models' tabular branch share.

    Purchases count by distinct purchase day (as BG/NBD does), spend is price × quantity of
    purchase rows. Columns: days_since_last_event, tenure_days, has_purchase, recency_days
    (days since the last purchase day, or since the first event for users who never bought),
    first_purchase_age_days, frequency, repeat_days (frequency − 1), monetary, avg_day_spend,
    buys_<w>d / spend_<w>d / events_<w>d per window, gap_mean_days, gap_std_days,
    gap_last_days, recency_over_gap, trend_30_vs_prev60, views_30d, carts_30d, sessions_30d,
    refunds_90d and share_<category> of purchase spend for each of ``categories``.
    Index: user_id (every user with an event before ``asof``), sorted.

    Written with numpy over integer user codes: it runs per request for one user (``predict``)
    as well as over millions of events, and pandas' per-call overhead dominated the first case.
    """
    df = events[events["ts"] < asof]
    if df.empty:
        return pd.DataFrame(index=pd.Index([], name="user_id"))
    codes, uniques = pd.factorize(df["user_id"], sort=True)
    n = len(uniques)
    day_ns = 86_400 * 10**9
    asof_ns = pd.Timestamp(asof).value
    ts_ns = df["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    age = (asof_ns - ts_ns) / day_ns  # days before asof, > 0
    event = df["event"].astype("string").fillna("").to_numpy(dtype=object)

    def per_user(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(codes, weights=weights, minlength=n).astype("float64")

    # columns gathered in a dict and framed once: ~40 DataFrame inserts cost more than the numpy
    f: dict[str, np.ndarray] = {}
    oldest = np.full(n, -np.inf)
    np.maximum.at(oldest, codes, age)
    newest = np.full(n, np.inf)
    np.minimum.at(newest, codes, age)
    f["days_since_last_event"] = newest
    f["tenure_days"] = oldest
    # purchases collapsed to (user, calendar day)
    buy = event == "purchase"
    price = pd.to_numeric(df["price"], errors="coerce").fillna(0.0).to_numpy(dtype="float64")
    qty = pd.to_numeric(df["quantity"], errors="coerce").fillna(1.0).to_numpy(dtype="float64")
    amount = price * qty
    b_codes, b_day, b_amount = codes[buy], ts_ns[buy] // day_ns, amount[buy]
    key = b_codes.astype("int64") * (1 << 32) + b_day
    ukey, inv = np.unique(key, return_inverse=True)
    pd_user = (ukey >> 32).astype("int64")
    pd_day = ukey - (pd_user << 32)
    pd_amount = np.bincount(inv, weights=b_amount, minlength=len(ukey))
    pd_age = (asof_ns - pd_day * day_ns) / day_ns  # age of the purchase day's midnight
    frequency = np.bincount(pd_user, minlength=n).astype("float64")
    has = frequency > 0
    last_age = np.full(n, np.nan)
    first_age = np.full(n, np.nan)
    if len(pd_user):
        ends = np.r_[np.flatnonzero(np.diff(pd_user)), len(pd_user) - 1]  # sorted by user then day
        starts = np.r_[0, ends[:-1] + 1]
        last_age[pd_user[ends]] = pd_age[ends]
        first_age[pd_user[starts]] = pd_age[starts]
    f["has_purchase"] = has.astype("float64")
    f["recency_days"] = np.where(has, last_age, oldest)
    f["first_purchase_age_days"] = np.where(has, first_age, 0.0)
    f["frequency"] = frequency
    f["repeat_days"] = np.clip(frequency - 1, 0, None)
    monetary = np.bincount(pd_user, weights=pd_amount, minlength=n)
    f["monetary"] = monetary
    f["avg_day_spend"] = np.divide(monetary, frequency, out=np.zeros(n), where=has)
    for w in windows:
        inw = pd_age < w
        f[f"buys_{w}d"] = np.bincount(pd_user[inw], minlength=n).astype("float64")
        f[f"spend_{w}d"] = np.bincount(pd_user[inw], weights=pd_amount[inw], minlength=n)
        f[f"events_{w}d"] = per_user((age < w).astype("float64"))
    # gaps between consecutive purchase days of the same user
    same = np.zeros(len(pd_user), dtype=bool)
    same[1:] = pd_user[1:] == pd_user[:-1]
    gaps = np.full(len(pd_user), np.nan)
    gaps[1:] = np.diff(pd_day)
    g_user, g = pd_user[same], gaps[same]
    n_gaps = np.bincount(g_user, minlength=n).astype("float64")
    gap_sum = np.bincount(g_user, weights=g, minlength=n)
    gap_sq = np.bincount(g_user, weights=g * g, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_mean = np.where(n_gaps > 0, gap_sum / n_gaps, np.nan)
        var = np.where(n_gaps > 1, (gap_sq - n_gaps * gap_mean**2) / (n_gaps - 1), np.nan)
    gap_last = np.full(n, np.nan)
    gap_last[g_user] = g  # later gaps overwrite earlier ones: rows are sorted by day
    f["gap_mean_days"] = gap_mean
    f["gap_std_days"] = np.sqrt(np.clip(var, 0, None))
    f["gap_last_days"] = gap_last
    ratio = f["recency_days"] / np.clip(np.nan_to_num(gap_mean, nan=-np.inf), 1.0, None)
    f["recency_over_gap"] = np.where(np.isnan(gap_mean), np.nan, ratio)
    b30 = f.get("buys_30d", np.zeros(n))
    b90 = f.get("buys_90d", np.zeros(n))
    f["trend_30_vs_prev60"] = b30 - (b90 - b30) / 2.0
    recent = age < 30
    f["views_30d"] = per_user((recent & (event == "view")).astype("float64"))
    f["carts_30d"] = per_user((recent & (event == "add_to_cart")).astype("float64"))
    s_codes, _ = pd.factorize(df["session_id"])
    pairs = np.unique(codes[recent].astype("int64") * (1 << 32) + s_codes[recent])
    f["sessions_30d"] = np.bincount((pairs >> 32).astype("int64"), minlength=n).astype("float64")
    f["refunds_90d"] = per_user(((age < 90) & (event == "refund")).astype("float64"))
    if categories:
        cat = df["category"].astype("string").fillna("").to_numpy(dtype=object)[buy]  # NA never equals a category
        for c in categories:
            spend = np.bincount(b_codes, weights=np.where(cat == c, b_amount, 0.0), minlength=n)
            f[f"share_{c}"] = np.divide(spend, monetary, out=np.zeros(n), where=monetary > 0)
    return pd.DataFrame(f, index=pd.Index(uniques, name="user_id"))
