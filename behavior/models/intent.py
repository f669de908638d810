"""Purchase intent: P(purchase in this session) from a session's events so far, and P(purchase in
the next 7 days) per user with the most likely next categories.

Both are ``SequenceTabularNet``s (GRU over the behaviour sentence + MLP over hand-made features)
trained with ``common.fit_binary`` on a time-based split (``evaluation.evaluate`` tests them at
its cutoff). Session examples see only the events before a session's first checkout or
purchase, so the label can never leak into the input.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from shopsight.behavior.features import rfm_features, top_categories
from shopsight.behavior.models.churn import end_of_events, population
from shopsight.behavior.models.common import (
    SEQUENCE_GLOSSARY,
    BehaviorModel,
    Calibration,
    FitResult,
    ModelError,
    Progress,
    Sequences,
    TabularScaler,
    TrainSettings,
    ablation_batch,
    ablation_factors,
    ablation_factors_from,
    build_net,
    distinct_per_group,
    fit_binary,
    fit_vocab,
    net_config,
    predict_logits,
    seed_everything,
    tokenize_events,
    user_evidence,
)
from shopsight.behavior.models.glossary import (
    RFM_GLOSSARY,
    Glossary,
    Group,
    Row,
    Said,
    Term,
    counted,
    flag,
    is_number,
    show_days,
    typical_from_card,
    typical_record,
    typical_values,
    value,
    worded,
)
from shopsight.behavior.models.metrics import best_f1_threshold
from shopsight.behavior.models.reasons import build_reasons, plan_reasons
from shopsight.behavior.models.rules import rows_of_users

# Events at or after which a session's outcome is (nearly) known: never shown to the session model.
OUTCOME_EVENTS: tuple[str, ...] = ("checkout", "purchase")
# How much one event says about the next categories a user buys: carts and purchases most.
CATEGORY_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "search": 1.0, "add_to_cart": 3.0, "purchase": 2.0, "review": 0.5}
CATEGORY_HALF_LIFE_DAYS = 7.0

# Recent-activity features added to ``rfm_features`` for intent (RFM alone is about purchases).
INTENT_EXTRAS: tuple[str, ...] = ("views_7d", "searches_7d", "carts_7d", "sessions_7d", "days_since_last_cart", "open_cart_7d")
SESSION_COUNTS: tuple[str, ...] = ("view", "search", "add_to_cart", "remove_from_cart", "login", "review")


# --- session examples ---------------------------------------------------------------------


def session_prefix(events: pd.DataFrame) -> pd.DataFrame:
    """The events of each session before its first checkout or purchase (those rows excluded).

    Rows are ordered by session then time (input order kept for ties), so an event logged at
    the same instant as the checkout but after it is excluded too. Sessions that open with a
    checkout or purchase have an empty prefix and no rows here; rows without a session id are
    left out. The result is ordered by user then time (ties: by session id, then input order).
    """
    session = pd.factorize(events["session_id"], sort=True)[0]
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    rows = np.flatnonzero(session >= 0)
    rows = rows[np.lexsort((ts[rows], session[rows]))]  # by session, then time; lexsort is stable
    outcome = events["event"].isin(OUTCOME_EVENTS).to_numpy(dtype="int64", na_value=0)[rows]
    seen = np.cumsum(outcome)
    opens = np.ones(len(rows), dtype=bool)
    opens[1:] = session[rows[1:]] != session[rows[:-1]]
    seen -= (seen - outcome)[np.maximum.accumulate(np.where(opens, np.arange(len(rows)), 0))]  # within the session
    kept = rows[seen == 0]
    user = _sort_codes(events["user_id"])
    return events.iloc[kept[np.lexsort((ts[kept], user[kept]))]].reset_index(drop=True)


def session_examples(events: pd.DataFrame, devices: Sequence[str] = (), *, prefix: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per session with a non-empty prefix: prefix features, the user's prior history, the label.

    Args:
        events: canonical, sessionized events (whole sessions: the label comes from them).
        devices: device labels to one-hot (learned on training data; others, and a session
            without a known device, count as none).
        prefix: ``session_prefix(events)`` if the caller already has it (it is reused for the sequences).

    Returns:
        Index session_id, sorted by start (ties: by user id); columns user_id, start (session
        start), end (last prefix event), session_end (last event of the whole session),
        purchased (label: the whole session had a purchase), and the numeric features in
        ``session_feature_names``.

    Written with numpy over integer session codes, not pandas groupbys: it runs per request for
    one user's few sessions (``predict_sessions`` in ``explain``), where each groupby, crosstab
    and join cost more than its arithmetic. A session's row depends only on its own events and
    its user's earlier sessions: one user's examples equal their rows of the whole table's.
    """
    if prefix is None:
        prefix = session_prefix(events)
    if prefix.empty:
        return pd.DataFrame(columns=["user_id", "start", "end", "session_end", "purchased", *session_feature_names(devices)])
    codes, sessions, _, first, last, size = _session_rows(prefix)
    n = len(sessions)
    ok = codes >= 0
    cols: dict[str, Any] = {"end": prefix["ts"].array.take(last), "n_events": size.astype("int64")}
    cols["n_items"] = distinct_per_group(codes, prefix["item_id"], n).astype("int64")
    cols["n_categories"] = distinct_per_group(codes, prefix["category"], n).astype("int64")
    price = pd.to_numeric(prefix["price"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    # sums by bincount: each session's own rows added in row order, so a session's features do not
    # depend on the other rows of the frame (pandas' groupby picks its summation by the data)
    has_price = ok & ~np.isnan(price)
    priced = np.bincount(codes[has_price], minlength=n)
    total = np.bincount(codes[has_price], weights=price[has_price], minlength=n)
    cols["mean_price"] = np.where(priced > 0, total / np.maximum(priced, 1), 0.0)
    max_price = np.full(n, -np.inf)
    np.fmax.at(max_price, codes[ok], price[ok])
    cols["max_price"] = np.where(priced > 0, max_price, 0.0)
    kind, kinds = pd.factorize(prefix["event"])
    per_kind = np.bincount((codes * len(kinds) + kind)[ok & (kind >= 0)], minlength=n * len(kinds)).reshape(n, len(kinds))
    for ev in SESSION_COUNTS:
        cols[f"n_{ev}"] = per_kind[:, kinds.get_loc(ev)] if ev in kinds else np.zeros(n, dtype="int64")
    cart = ok & (prefix["event"] == "add_to_cart").to_numpy(dtype=bool, na_value=False)
    value = np.nan_to_num(price, nan=0.0) * prefix["quantity"].to_numpy(dtype="float64", na_value=np.nan)
    cols["cart_value"] = np.bincount(codes[cart], weights=value[cart], minlength=n).astype("float64")  # (int zeros when empty)
    ts = prefix["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    p_start = ts[first]
    minutes = (ts[last] - p_start) / 1e9 / 60.0  # what .dt.total_seconds() / 60 gives
    cols["minutes"] = minutes
    cols["events_per_minute"] = size / np.maximum(minutes, 1.0)
    cols["hour"] = (p_start // 3_600_000_000_000 % 24).astype("int32")  # ts is UTC (canonical events)
    cols["weekend"] = ((p_start // 86_400_000_000_000 + 3) % 7 >= 5).astype("float64")  # 1970-01-01 was a Thursday (3)
    device = np.full(n, "", dtype=object)
    if "device" in prefix.columns:
        known = np.flatnonzero(ok & prefix["device"].notna().to_numpy(dtype=bool))
        owner, at = np.unique(codes[known], return_index=True)  # each session's first known device, as groupby first()
        device[owner] = prefix["device"].to_numpy(dtype=object)[known[at]]
    for d in devices:
        cols[f"device_{d}"] = (device == d).astype("float64")
    whole = _whole_sessions(events)
    at = whole.index.get_indexer(sessions)
    for name in ("user_id", "start", "session_end", "purchased"):
        cols[name] = whole[name].array.take(at)
    for name, values in _prior_history(whole).items():
        cols[name] = values[at]
    start = whole["start"].to_numpy(dtype="datetime64[ns]").astype("int64")[at]
    order = np.lexsort((_sort_codes(cols["user_id"]), start))  # sort_values(["start", "user_id"], kind="stable")
    return pd.DataFrame({k: v.take(order) for k, v in cols.items()}, index=sessions.take(order))


def _sort_codes(values: Any) -> np.ndarray:
    """Integer codes that sort as ``values`` do under ``sort_values`` (missing values last)."""
    codes = pd.factorize(values, sort=True)[0]
    return np.where(codes >= 0, codes, codes.max(initial=-1) + 1)


def _session_rows(events: pd.DataFrame) -> tuple[np.ndarray, pd.Index, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group rows by session_id as ``groupby(sort=False)`` does (first-appearance order, missing ids dropped).

    Returns (code per row, -1 for a missing id; session ids; per session: its first row, a
    row of its earliest time, a row of its latest time, its number of rows). Written with
    numpy: these per-session tables run per request for one user, where pandas' per-call
    overhead of a multi-column ``agg`` dominated.
    """
    codes, uniques = pd.factorize(events["session_id"])
    n = len(uniques)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    rows = np.flatnonzero(codes >= 0)
    order = rows[np.lexsort((ts[rows], codes[rows]))]  # by session, then time
    size = np.bincount(codes[rows], minlength=n)
    bounds = np.concatenate([[0], np.cumsum(size)]).astype("int64")
    first_row = rows[np.unique(codes[rows], return_index=True)[1]]
    return codes, pd.Index(uniques, name="session_id"), first_row, order[bounds[:-1]], order[bounds[1:] - 1], size


def _whole_sessions(events: pd.DataFrame) -> pd.DataFrame:
    """Per session (first-appearance order): user_id, start, session_end, purchased (any purchase event)."""
    codes, sessions, first_row, first, last, _ = _session_rows(events)
    ok = codes >= 0
    buy = (events["event"] == "purchase").to_numpy(dtype=bool, na_value=False)
    return pd.DataFrame({
        "user_id": events["user_id"].array.take(first_row),
        "start": events["ts"].array.take(first),
        "session_end": events["ts"].array.take(last),
        "purchased": np.bincount(codes[ok], weights=buy[ok].astype("float64"), minlength=len(sessions)) > 0,
    }, index=sessions)


def _prior_history(whole: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per session of ``whole`` (its row order): the user's sessions and purchases before it and the days since them.

    numpy over the sessions sorted by user then start (each user's sessions contiguous)
    instead of grouped cumcount/cumsum/shift/ffill: the same values at a fraction of the cost.
    """
    start = whole["start"].to_numpy(dtype="datetime64[ns]").astype("int64")
    user = _sort_codes(whole["user_id"])
    s = np.lexsort((start, user))
    n = len(s)
    at = np.arange(n)
    user = user[s]
    opens = np.ones(n, dtype=bool)
    opens[1:] = user[1:] != user[:-1]
    first = np.maximum.accumulate(np.where(opens, at, 0)) if n else at  # first row of the row's user
    purchased = whole["purchased"].to_numpy(dtype=bool)[s]
    bought = purchased.astype("float64")
    before = np.cumsum(bought) - bought  # purchases in all earlier rows
    prior_sessions = (at - first).astype("float64")
    prior_purchases = before - before[first]
    t = start[s]
    prev = np.where(opens, -1, at - 1)
    last = np.maximum.accumulate(np.where(purchased, at, -1)) if n else at  # latest purchase row so far
    last_before = np.concatenate([[-1], last[:-1]]) if n else at
    last_before = np.where(last_before >= first, last_before, -1)  # only the user's own sessions
    days_since = lambda row: np.where(row >= 0, (t - t[row]) / 1e9 / 86400, -1.0)  # noqa: E731  (as .dt.total_seconds() / 86400)
    sorted_out = {
        "prior_sessions": prior_sessions,
        "prior_purchases": prior_purchases,
        "prior_purchase_rate": prior_purchases / np.maximum(prior_sessions, 1),
        "days_since_prev_session": days_since(prev),
        "days_since_prev_purchase": days_since(last_before),
    }
    out = {}
    for name, values in sorted_out.items():
        out[name] = np.empty(n)
        out[name][s] = values
    return out


def session_feature_names(devices: Sequence[str]) -> list[str]:
    """The tabular features of the session model, in order."""
    return [
        "n_events", "n_items", "n_categories", "mean_price", "max_price",
        *[f"n_{e}" for e in SESSION_COUNTS], "cart_value", "minutes", "events_per_minute", "hour", "weekend",
        *[f"device_{d}" for d in devices],
        "prior_sessions", "prior_purchases", "prior_purchase_rate", "days_since_prev_session", "days_since_prev_purchase",
    ]


# --- user examples ------------------------------------------------------------------------


def user_intent_features(events: pd.DataFrame, asof: pd.Timestamp, categories: Sequence[str] = ()) -> pd.DataFrame:
    """Per-user features from events strictly before ``asof``: ``rfm_features`` plus ``INTENT_EXTRAS``.

    The extras describe the last week (views, searches, cart adds, sessions, items carted
    but not bought) and the days since the last cart add. Index: every user with an event
    before ``asof``.
    """
    df = events[events["ts"] < asof]
    f = rfm_features(df, asof, categories=list(categories))
    if f.empty:
        return f
    # numpy over the row of each event's user in ``f``: this runs per request for one user, where
    # pandas filters and groupbys cost more than the rest of the features
    n = len(f)
    row = f.index.get_indexer(df["user_id"])
    ts = df["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    week = ts >= (asof - pd.Timedelta(days=7)).value
    kind, kinds = pd.factorize(df["event"])
    count = lambda name: np.bincount(row[week & (kind == kinds.get_loc(name))], minlength=n).astype("float64") if name in kinds else np.zeros(n)  # noqa: E731
    carts = count("add_to_cart")
    last_cart = np.full(n, np.iinfo("int64").min)
    if "add_to_cart" in kinds:
        is_cart = kind == kinds.get_loc("add_to_cart")
        np.maximum.at(last_cart, row[is_cart], ts[is_cart])
    never = last_cart == np.iinfo("int64").min
    extras = {
        "views_7d": count("view"),
        "searches_7d": count("search"),
        "carts_7d": carts,
        "sessions_7d": distinct_per_group(np.where(week, row, -1), df["session_id"], n),
        "open_cart_7d": np.clip(carts - count("purchase") - count("remove_from_cart"), 0.0, None),
        # as (asof - last cart).dt.total_seconds() / 86400; a user who never carted: tenure + 1
        "days_since_last_cart": np.where(never, f["tenure_days"].to_numpy() + 1.0, (pd.Timestamp(asof).value - last_cart) / 1e9 / 86400),
    }
    return pd.concat([f, pd.DataFrame(extras, index=f.index)], axis=1).astype("float64")


def bought_within(events: pd.DataFrame, asof: pd.Timestamp, days: float, users: pd.Index) -> np.ndarray:
    """1 for each of ``users`` with a purchase in [asof, asof + days), else 0: the user-intent label."""
    end = asof + pd.Timedelta(days=days)
    buys = events[(events["event"] == "purchase") & (events["ts"] >= asof) & (events["ts"] < end)]
    return users.isin(pd.Index(buys["user_id"].unique())).astype("int64")


def category_affinity(events: pd.DataFrame, asof: pd.Timestamp | None = None) -> pd.DataFrame:
    """Each user's recency-weighted category mix: the basis of "most likely next categories".

    Every event counts ``CATEGORY_EVENT_WEIGHTS[event]`` (cart adds 3, purchases 2, views and
    searches 1) times ``0.5 ** (age_days / CATEGORY_HALF_LIFE_DAYS)``, age counted back from
    ``asof`` (default: the last event). A transparent rule rather than a learned head, so an
    answer can say why; its hit rate is measured beside a "most bought" baseline in the card
    (``evaluation.next_category_hit_rate``).

    Returns:
        Columns user_id, category, share (shares of a user sum to 1), largest share first.
    """
    df = events[events["category"].notna()]
    if asof is not None:
        df = df[df["ts"] < asof]
    ts = df["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    ref = pd.Timestamp(asof).value if asof is not None else (ts.max() if len(ts) else 0)
    age = (ref - ts) / 1e9 / 86400  # as (ref - ts).dt.total_seconds() / 86400
    kind, kinds = pd.factorize(df["event"])
    per_kind = np.array([CATEGORY_EVENT_WEIGHTS.get(str(k), 0.0) for k in kinds] + [0.0])  # other events (and -1): 0
    w = per_kind[kind] * np.power(0.5, age / CATEGORY_HALF_LIFE_DAYS)
    # numpy over (user, category) codes, both sorted as strings: one user's mix runs per request
    user, users = pd.factorize(df["user_id"].astype(str), sort=True)
    cat, cats = pd.factorize(df["category"].astype(str), sort=True)
    pos = w > 0
    pair, at = np.unique(user[pos].astype("int64") * len(cats) + cat[pos], return_inverse=True)
    total = np.bincount(at, weights=w[pos], minlength=len(pair))
    pair_user, pair_cat = pair // max(len(cats), 1), pair % max(len(cats), 1)
    share = total / np.bincount(pair_user, weights=total)[pair_user]
    order = np.lexsort((pair_cat, -share, pair_user))  # user, then the largest share, then category
    return pd.DataFrame({
        "user_id": np.asarray(users, dtype=object)[pair_user[order]],
        "category": np.asarray(cats, dtype=object)[pair_cat[order]],
        "share": share[order],
    })


def next_categories(events: pd.DataFrame, user_id: str, *, k: int = 3, asof: pd.Timestamp | None = None) -> list[dict[str, Any]]:
    """The user's ``k`` most likely next categories (``category_affinity`` of their events)."""
    mix = category_affinity(events[events["user_id"] == user_id], asof)
    return [{"category": c, "share": round(float(v), 4)} for c, v in zip(mix["category"].head(k), mix["share"].head(k))]


# --- the glossary of the features defined here -----------------------------------------------


def _days_since_last_cart(v: float | None, row: Row) -> str:
    if not is_number(v) or ("tenure_days" in row and float(v) > value(row, "tenure_days")):
        return "never added anything to the cart"  # the feature is tenure + 1 for those who never did
    return f"last added something to the cart {show_days(v)} ago"


INTENT_TERMS: dict[str, Term] = {
    "views_7d": counted("product view", "product views", "in the past week", reading="product page views in the 7 days before the as-of time"),
    "searches_7d": counted("search", "searches", "in the past week", reading="searches in the past 7 days"),
    "carts_7d": counted("cart add", "cart adds", "in the past week", reading="items added to the cart in the past 7 days"),
    "sessions_7d": counted("session", "sessions", "in the past week", none="no visit in the past week", reading="visits in the past 7 days"),
    "open_cart_7d": counted("item left in the cart", "items left in the cart", "from the past week", none="nothing left in the cart from the past week",
                            reading="cart adds in the past 7 days minus purchases and removals (never below 0)"),
    "days_since_last_cart": Term("days since they last added something to the cart",
                                 "a customer who never added anything has their tenure + 1 day here", "days", _days_since_last_cart),
}


INTENT_GLOSSARY = Glossary(terms=INTENT_TERMS, groups=(
    Group("this_week", ("open_cart_7d", "carts_7d", "views_7d", "searches_7d", "sessions_7d", "days_since_last_cart"),
          "how much they shopped in the past week (visits, views, searches, cart adds, an open cart)"),
))


# The user model's words: the past week's activity, RFM, the behaviour sentence.
USER_GLOSSARY = Glossary.merge(INTENT_GLOSSARY, RFM_GLOSSARY, SEQUENCE_GLOSSARY, population="active customers")


def _prior_days(what: str) -> Callable[[float | None, Row], str]:
    def say(v: float | None, row: Row) -> str:
        if not is_number(v) or float(v) < 0:  # -1: none before this session
            return f"no earlier {what}"
        return f"{show_days(v)} since their previous {what}"
    return say


def _device_term(label: str) -> Term:
    return flag(f"whether the session is on a {label}", f"on a {label}", f"not on a {label}", reading=f"1 = the session's first known device is '{label}'")


SESSION_TERMS: dict[str, Term] = {
    "n_events": counted("event", "events", "before checkout", reading="events of the session before its first checkout or purchase"),
    "n_items": counted("product", "different products", "looked at", reading="distinct items in the session so far"),
    "n_categories": counted("category", "categories", "browsed", reading="distinct categories in the session so far"),
    "mean_price": worded("average price of the items looked at", "money", "items at {v} on average", reading="mean price over the session's priced events"),
    "max_price": worded("dearest item looked at", "money", "the dearest item at {v}", reading="highest price seen in the session"),
    **{f"n_{e}": counted(one, many, "in the session", reading=f"'{e}' events before checkout")
       for e, (one, many) in {"view": ("product view", "product views"), "search": ("search", "searches"), "add_to_cart": ("cart add", "cart adds"),
                              "remove_from_cart": ("cart removal", "cart removals"), "login": ("login", "logins"), "review": ("review", "reviews")}.items()},
    "cart_value": worded("value of the cart", "money", "{v} in the cart", reading="price x quantity of the session's cart adds"),
    "minutes": worded("minutes of the session so far", "number", "{v} minutes into the session", reading="from the first event to the last before checkout"),
    "events_per_minute": worded("events per minute", "rate", "{v} events a minute", reading="a person browses at a few a minute"),
    "hour": Term("hour the session started (UTC)", "0-23", "clock", lambda v, row: f"started at {int(v) % 24:02d}:00 UTC" if is_number(v) else "start time unknown"),
    "weekend": flag("whether the session is at the weekend", "at the weekend", "on a weekday", reading="1 = Saturday or Sunday (UTC)"),
    "prior_sessions": counted("earlier session", "earlier sessions", "", none="their first session", reading="the user's sessions before this one"),
    "prior_purchases": counted("earlier session with a purchase", "earlier sessions with a purchase", "", none="no purchase in earlier sessions",
                               reading="the user's earlier sessions that ended in a purchase"),
    "prior_purchase_rate": worded("share of earlier sessions with a purchase", "fraction", "{v} of their earlier sessions ended in a purchase",
                                  reading="earlier sessions with a purchase / earlier sessions"),
    "days_since_prev_session": Term("days since the previous session", "-1 = their first session", "days", _prior_days("session"), sentinel=-1.0),
    "days_since_prev_purchase": Term("days since the previous purchase", "-1 = no earlier purchase", "days", _prior_days("purchase"), sentinel=-1.0),
}


@functools.cache
def session_glossary(devices: tuple[str, ...]) -> Glossary:
    """The session model's words; its device columns depend on the devices learned at fit time (cached per devices)."""
    def device_said(row: Row, typical: Mapping[str, float], population: str, lead: str) -> Said:
        on = next((d for d in devices if value(row, f"device_{d}") >= 0.5), None)
        return Said(f"on a {on}" if on else "on another device", None, None)

    session = Glossary(terms=SESSION_TERMS, patterns=(("device_", _device_term),), groups=(
        Group("session_browsing", ("n_view", "n_events", "n_items", "n_categories", "n_search", "minutes", "events_per_minute"),
              "how much of the shop the session has looked at"),
        Group("session_cart", ("n_add_to_cart", "n_remove_from_cart", "cart_value"), "what the session put in the cart"),
        Group("session_prices", ("mean_price", "max_price"), "the price level the session looks at"),
        Group("buying_history", ("prior_sessions", "prior_purchases", "prior_purchase_rate", "days_since_prev_session", "days_since_prev_purchase"),
              "the user's earlier sessions and purchases"),
        Group("device", tuple(f"device_{d}" for d in devices), "which device the session is on", device_said),
    ))
    return Glossary.merge(session, SEQUENCE_GLOSSARY, population="sessions")  # the session's own sequence, too


# --- the model ----------------------------------------------------------------------------


class IntentModel(BehaviorModel):
    """Session and user purchase intent: GRUs over behaviour sentences + MLPs over hand-made features.

    ``predict_proba`` gives P(purchase within ``horizon_days``) per user; ``predict_sessions``
    gives P(purchase in this session) from each session's events before its first checkout.

    Training follows the churn protocol: the test cutoff C leaves ``horizon_days`` of future;
    user examples are snapshots at C − H − step·k (the newest validates), so no label window
    passes C. Session examples are sessions that ended before C (the latest fifth
    validates); sessions starting at or after C are the session test set.

    Args:
        horizon_days: H, the user-intent window.
        n_snapshots: user training snapshots.
        snapshot_step_days: days between user snapshots.
        active_days: user population = an event in the ``active_days`` before a snapshot.
        n_categories: purchase-share features for this many top categories.
        max_train_sessions: the most recent training sessions kept (bounds training time).
        session_max_len: tokens kept per session prefix.
        use_sequence: include the GRU branches (False: tabular MLPs only).
        settings: training knobs; the user net may use half of ``max_seconds``, the session net a third.
    """

    name = "intent"
    # Not measurable (the shop's latent intent is per session, not a mechanism); as churn, the other
    # likely/unlikely question, where "verdict" measured best.
    reason_ordering = "verdict"

    def __init__(
        self,
        horizon_days: int = 7,
        *,
        n_snapshots: int = 4,
        snapshot_step_days: int = 7,
        active_days: int | None = 90,
        n_categories: int = 6,
        max_train_sessions: int = 30000,
        session_max_len: int = 24,
        use_sequence: bool = True,
        settings: TrainSettings | None = None,
    ) -> None:
        self.horizon_days = horizon_days
        self.n_snapshots = n_snapshots
        self.snapshot_step_days = snapshot_step_days
        self.active_days = active_days
        self.n_categories = n_categories
        self.max_train_sessions = max_train_sessions
        self.session_max_len = session_max_len
        self.use_sequence = use_sequence
        self.settings = settings or TrainSettings(max_len=48)
        self.net_: torch.nn.Module | None = None
        self.session_net_: torch.nn.Module | None = None
        self.vocab_: dict[str, Any] | None = None
        self.categories_: list[str] = []
        self.devices_: list[str] = []
        self.user_scaler_: TabularScaler | None = None
        self.session_scaler_: TabularScaler | None = None
        self.user_calibration_ = Calibration()
        self.session_calibration_ = Calibration()
        self.user_threshold_: float = 0.5
        self.session_threshold_: float = 0.5
        # the training record ``evaluation.evaluate`` reports (not saved: a loaded model has its card)
        self.cutoff_: pd.Timestamp | None = None
        self.train_asofs_: list[pd.Timestamp] = []
        self.user_fit_: FitResult | None = None
        self.session_fit_: FitResult | None = None
        self.train_seconds_: float | None = None
        self.session_typical_: dict[str, float] = {}  # the training sessions' typical values (``typical_`` is the users')

    # --- data ---------------------------------------------------------------------------
    def user_snapshot(self, events: pd.DataFrame, asof: pd.Timestamp, users: pd.Index | None = None) -> tuple[pd.DataFrame, Sequences, np.ndarray]:
        """Features, sequences and labels (purchase within H) of ``users`` (default: the active population) at ``asof``."""
        if users is None:
            users = population(events, asof, self.active_days)
        past = events[(events["ts"] < asof) & events["user_id"].isin(users)]
        feats = user_intent_features(past, asof, self.categories_).reindex(users)
        seqs = self._sequences(past, users, "user_id", self.settings.max_len)
        return feats, seqs, bought_within(events, asof, self.horizon_days, users)

    def user_training_set(self, events: pd.DataFrame, asofs: Sequence[pd.Timestamp]) -> tuple[pd.DataFrame, Sequences, np.ndarray, np.ndarray]:
        """User snapshots at ``asofs`` (newest first), stacked: features, sequences, labels, and the
        validation mask (the newest snapshot's rows)."""
        H = pd.Timedelta(days=self.horizon_days)
        snaps = [self.user_snapshot(events[events["ts"] < a + H], a) for a in asofs]
        X = pd.concat([f for f, _, _ in snaps], ignore_index=True)
        y = np.concatenate([y for _, _, y in snaps])
        seqs = _stack([q for _, q, _ in snaps])
        val = np.zeros(len(y), dtype=bool)
        val[: len(snaps[0][2])] = True
        return X, seqs, y, val

    def session_split(self, events: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
        """Session examples around ``cutoff``: (training sessions — ended before it, the latest
        ``max_train_sessions``; their validation mask — the latest fifth; test sessions — started at or after it)."""
        ex = session_examples(events, self.devices_)
        train = ex[ex["session_end"] < cutoff].tail(self.max_train_sessions)
        sval = _latest_fraction(train["start"].astype("int64").to_numpy(), 0.2)
        return train, sval, ex[ex["start"] >= cutoff]

    def split_times(self, first: pd.Timestamp, last: pd.Timestamp, cutoff: pd.Timestamp | None = None) -> tuple[pd.Timestamp, list[pd.Timestamp]]:
        """The test cutoff C and the user snapshot times (newest first) for events spanning ``first``..``last``.

        Raises:
            ModelError: fewer than two snapshots fit in the events' span.
        """
        end = pd.Timestamp(last).floor("D") + pd.Timedelta(days=1)  # end_of_events
        H = pd.Timedelta(days=self.horizon_days)
        C = pd.Timestamp(cutoff) if cutoff is not None else end - H
        if C.tzinfo is None:
            C = C.tz_localize("UTC")
        asofs = [C - H - pd.Timedelta(days=self.snapshot_step_days * k) for k in range(self.n_snapshots)]
        asofs = [a for a in asofs if a - first >= pd.Timedelta(days=7)]
        if len(asofs) < 2:
            raise ModelError(
                f"not enough history for {self.horizon_days}-day purchase intent: events span "
                f"{pd.Timestamp(first).date()}..{end.date()}; need about {2 * self.horizon_days + 21} days before the end"
            )
        return C, asofs

    # --- training tables (``shopsight train --engine spark``): two, one per net ----------
    table_parts = ("users", "sessions")

    def table_params(self) -> dict[str, Any]:
        """What the training tables built for this model depend on (their manifests record them; ``fit_table`` checks them)."""
        return {"horizon_days": self.horizon_days, "n_snapshots": self.n_snapshots, "snapshot_step_days": self.snapshot_step_days,
                "active_days": self.active_days, "n_categories": self.n_categories, "max_train_sessions": self.max_train_sessions,
                "session_max_len": self.session_max_len, "use_sequence": self.use_sequence, "seed": self.settings.seed,
                "max_len": self.settings.max_len}

    def user_training_rows(self, events: pd.DataFrame, asofs: Sequence[pd.Timestamp], cutoff: pd.Timestamp,
                           feature_names: Sequence[str]) -> pd.DataFrame:
        """Some users' rows of the user table (``streaming.table_rows``): ``user_training_set``'s snapshots
        (the newest validates; ``snapshot`` = its place in ``asofs``) and the test snapshot at ``cutoff`` (-1).

        ``events`` holds every event of those users.
        """
        from shopsight.behavior.models.streaming import table_rows

        H = pd.Timedelta(days=self.horizon_days)
        parts = []
        for i, a in enumerate([*asofs, cutoff]):
            X, seqs, y = self.user_snapshot(events[events["ts"] < a + H], a)
            split = "test" if i == len(asofs) else ("validation" if i == 0 else "train")
            parts.append(table_rows(np.full(len(y), split), np.full(len(y), -1 if split == "test" else i), seqs.keys, X, seqs, y, feature_names))
        return pd.concat(parts, ignore_index=True)

    def session_training_rows(self, events: pd.DataFrame, cutoff: pd.Timestamp, feature_names: Sequence[str]) -> pd.DataFrame:
        """Some users' rows of the session table: their sessions that ended before ``cutoff`` (split
        ``candidate``) and those starting at or after it (``test``), as ``session_split`` finds them.

        The row's ``user_id`` is the session id, ``owner`` its user, ``snapshot`` its start (ns).
        Which candidates train and which validate depends on every user's sessions (the latest
        ``max_train_sessions``, the latest fifth of them): ``session_split_of`` decides, over the whole table.
        """
        from shopsight.behavior.models.streaming import table_rows

        prefix = session_prefix(events)
        ex = session_examples(events, self.devices_, prefix=prefix)
        parts = []
        for part, split in ((ex[ex["session_end"] < cutoff], "candidate"), (ex[ex["start"] >= cutoff], "test")):
            seqs = self._session_sequences(events, part.index, prefix=prefix)
            rows = table_rows(np.full(len(part), split), part["start"].to_numpy(dtype="datetime64[ns]").astype("int64"), part.index,
                              part[list(feature_names)], seqs, part["purchased"].astype("int64").to_numpy(), feature_names)
            rows.insert(1, "owner", part["user_id"].astype(str).to_numpy(dtype=object))
            parts.append(rows)
        return pd.concat(parts, ignore_index=True)

    def session_split_of(self, n_candidates: int) -> tuple[int, int]:
        """(training sessions kept, validating sessions among them) of ``n_candidates`` sessions that ended
        before the cutoff: ``session_split``'s latest ``max_train_sessions``, and their latest fifth."""
        n = min(n_candidates, self.max_train_sessions)
        return n, (max(1, int(round(n * 0.2))) if n else 0)

    def fit_table(self, tables: Mapping[str, Any], *, progress: Progress | None = None, buffer_rows: int | None = None,
                  typical_rows: int = 200_000) -> "IntentModel":
        """Learn both nets from the training tables (``users``, ``sessions``: ``streaming.TrainingTable``s) a batch at a time.

        The tables hold the rows ``fit`` builds (built on Spark by ``user_training_rows`` and
        ``session_training_rows``); each net's scaler, warm start and training stream its table
        (``streaming.fit_binary_streaming``). The typical values come from at most ``typical_rows`` rows.

        Raises:
            TableError: a table was built for another model or other settings.
        """
        from shopsight.behavior.models.streaming import BUFFER_ROWS, TableError, fit_binary_streaming, scaler_from_table

        t0 = time.perf_counter()
        report = progress or (lambda stage, frac: None)
        users, sessions = tables["users"], tables["sessions"]
        for t in (users, sessions):
            if t.manifest.get("model") != self.name or t.manifest.get("params") != self.table_params():
                raise TableError(f"the training table {t.folder} was built for {t.manifest.get('model')} with {t.manifest.get('params')}, "
                                 f"not intent with {self.table_params()}: build it again with these settings")
        m = users.manifest
        self.vocab_, self.categories_, self.devices_ = m["vocab"], list(m["categories"]), list(m["devices"])
        self.cutoff_, self.train_asofs_ = pd.Timestamp(m["cutoff"]), [pd.Timestamp(a) for a in m["train_asofs"]]
        s = self.settings
        buffer = buffer_rows or BUFFER_ROWS
        self.user_scaler_ = scaler_from_table(users, "train")
        self.net_ = self._new_net(len(self.user_scaler_.columns))
        ru, rec_u = fit_binary_streaming(self.net_, users, self.user_scaler_, settings=replace(s, max_seconds=s.max_seconds / 2),
                                         progress=lambda st, fr: report("user intent", fr), buffer_rows=buffer)
        self.typical_ = typical_values(users.frame(("validation", "train"), limit=typical_rows)[0], self.glossary())
        self.user_calibration_ = ru.calibration
        self.user_threshold_ = best_f1_threshold(rec_u.y_val, ru.calibration.apply(ru.val_logits))
        positives = sum(int(b.column("y").to_numpy().sum()) for b in sessions.batches(("train", "validation"), ["y"]))
        if not 0 < positives < sessions.rows(("train", "validation")):
            raise ModelError("session intent needs sessions with and without purchases before the cutoff")
        self.session_scaler_ = scaler_from_table(sessions, "train")
        self.session_net_ = self._new_net(len(self.session_scaler_.columns))
        rs, rec_s = fit_binary_streaming(self.session_net_, sessions, self.session_scaler_,
                                         settings=replace(s, max_len=self.session_max_len, max_seconds=s.max_seconds / 3),
                                         progress=lambda st, fr: report("session intent", fr), buffer_rows=buffer)
        self.session_calibration_ = rs.calibration
        self.session_typical_ = typical_values(sessions.frame(("validation", "train"), limit=typical_rows)[0], self.session_glossary())
        self.session_threshold_ = best_f1_threshold(rec_s.y_val, rs.calibration.apply(rs.val_logits))
        self.user_fit_, self.session_fit_ = ru, rs
        self.stream_records_ = {"users": rec_u, "sessions": rec_s}
        self.train_seconds_ = time.perf_counter() - t0
        self.version_ = None
        return self

    def _sequences(self, events: pd.DataFrame, keys: pd.Index, by: str, max_len: int) -> Sequences:
        if not self.use_sequence:
            return Sequences(np.zeros((len(keys), 1), dtype="int64"), np.ones(len(keys), dtype="int64"), keys)
        return tokenize_events(events, self.vocab_ or {}, by=by, keys=keys, max_len=max_len)

    def _session_sequences(self, events: pd.DataFrame, session_ids: pd.Index, *, prefix: pd.DataFrame | None = None) -> Sequences:
        """Token sequences of the prefixes of ``session_ids``; ``prefix``: ``session_prefix`` of ``events`` if already known."""
        if prefix is None:
            prefix = session_prefix(events[events["session_id"].isin(session_ids)])
        return self._sequences(prefix, session_ids, "session_id", self.session_max_len)  # other sessions' rows: left out

    def _new_net(self, n_tabular: int) -> torch.nn.Module:
        s = self.settings
        vocab = int(self.vocab_["size"]) if (self.use_sequence and self.vocab_) else 0
        return build_net({"vocab_size": vocab, "n_tabular": n_tabular, "emb_dim": s.emb_dim, "hidden": s.hidden, "dropout": s.dropout})

    # --- training -----------------------------------------------------------------------
    def fit(
        self,
        events: pd.DataFrame,
        *,
        labels: pd.DataFrame | None = None,
        cutoff: pd.Timestamp | None = None,
        progress: Progress | None = None,
    ) -> "IntentModel":
        """Learn both nets from what happened before ``cutoff`` (user label windows end by it).

        Args:
            events: canonical, sessionized events.
            labels: unused: purchases in the events are the ground truth of intent (the demo
                shop's latent session intent is not observable in real data). Accepted for the
                shared interface.
            cutoff: the test cutoff C (default: H days before the end of the events).
            progress: optional ``progress(stage, fraction)`` callback.
        """
        t0 = time.perf_counter()
        report = progress or (lambda stage, frac: None)
        end_of_events(events)  # raises on an empty table
        C, asofs = self.split_times(events["ts"].min(), events["ts"].max(), cutoff)
        s = self.settings
        seed_everything(s.seed, s.threads)
        report("features", 0.0)
        before_c = events[events["ts"] < C]
        self.vocab_ = fit_vocab(before_c)
        self.categories_ = top_categories(before_c, self.n_categories)
        self.devices_ = _top_values(before_c, "device", 6)

        # --- user intent: stacked snapshots, the newest validates ---
        X_train, seq_train, y_train, val = self.user_training_set(events, asofs)
        report("features", 0.5)
        self.user_scaler_ = TabularScaler.fit(X_train[~val])
        self.net_ = self._new_net(X_train.shape[1])
        # Two nets share the training budget: half of max_seconds for users, a third for sessions.
        ru = fit_binary(self.net_, seq_train, self.user_scaler_.transform(X_train), y_train, val_mask=val,
                        settings=replace(s, max_seconds=s.max_seconds / 2), progress=lambda st, fr: report("user intent", fr))
        self.typical_ = typical_values(X_train, self.glossary())  # the snapshots' active customers
        self.user_calibration_ = ru.calibration
        self.user_threshold_ = best_f1_threshold(y_train[val], ru.calibration.apply(ru.val_logits))

        # --- session intent: sessions that ended before C; the latest fifth validates ---
        train_ex, sval, _ = self.session_split(events, C)
        if train_ex["purchased"].nunique() < 2:
            raise ModelError("session intent needs sessions with and without purchases before the cutoff")
        ys = train_ex["purchased"].astype("int64").to_numpy()
        names = session_feature_names(self.devices_)
        report("features", 1.0)
        self.session_scaler_ = TabularScaler.fit(train_ex.loc[~sval, names])
        self.session_net_ = self._new_net(len(names))
        rs = fit_binary(self.session_net_, self._session_sequences(events, train_ex.index), self.session_scaler_.transform(train_ex),
                        ys, val_mask=sval, settings=replace(s, max_len=self.session_max_len, max_seconds=s.max_seconds / 3),
                        progress=lambda st, fr: report("session intent", fr))
        self.session_calibration_ = rs.calibration
        self.session_typical_ = typical_values(train_ex[names], self.session_glossary())  # the training sessions
        self.session_threshold_ = best_f1_threshold(ys[sval], rs.calibration.apply(rs.val_logits))
        self.cutoff_, self.train_asofs_ = C, asofs
        self.user_fit_, self.session_fit_ = ru, rs
        self.train_seconds_ = time.perf_counter() - t0
        self.version_ = None
        return self

    # --- inference ----------------------------------------------------------------------
    def _user_inputs(self, events: pd.DataFrame, users: pd.Index, asof: pd.Timestamp) -> tuple[pd.DataFrame, Sequences]:
        mine = events[events["user_id"].isin(users) & (events["ts"] < asof)]
        feats = user_intent_features(mine, asof, self.categories_).reindex(users)
        return feats, self._sequences(mine, users, "user_id", self.settings.max_len)

    def predict_proba(self, events: pd.DataFrame, user_ids: Sequence[str] | None = None) -> pd.Series:
        """P(purchase within ``horizon_days``) per user, as of the end of ``events`` (index user_id).

        Unknown user ids raise ``KeyError`` naming them.
        """
        self._check_fitted()
        return self.predict_proba_at(events, end_of_events(events), user_ids)[0]

    def predict_proba_at(self, events: pd.DataFrame, asof: pd.Timestamp, user_ids: Sequence[str] | None = None) -> tuple[pd.Series, pd.DataFrame]:
        """``predict_proba`` as of ``asof`` (events before it), with the feature rows it read (index user_id)."""
        self._check_fitted()
        users = _users(events, user_ids)
        feats, seqs = self._user_inputs(events, users, asof)
        p = self.user_calibration_.apply(predict_logits(self.net_, seqs, self.user_scaler_.transform(feats)))
        return pd.Series(p, index=users, name="p_intent"), feats

    def predict_sessions(self, events: pd.DataFrame, session_ids: Sequence[str] | None = None) -> pd.Series:
        """P(purchase in the session) from each session's events before its first checkout/purchase.

        Index session_id. Sessions with an empty prefix (they open with a checkout) are absent;
        unknown session ids raise ``KeyError``.
        """
        self._check_fitted()
        if session_ids is not None:
            sids = pd.Index([str(x) for x in session_ids])
            unknown = sids.difference(pd.Index(events["session_id"].astype(str).unique()))
            if len(unknown):
                raise KeyError(f"unknown session id(s): {', '.join(map(str, unknown[:5]))}")
            owners = events.loc[events["session_id"].isin(sids), "user_id"].unique()
            events = events[events["user_id"].isin(owners)]  # prior history needs the owners' earlier sessions
        return self._score_sessions(events, None if session_ids is None else sids)

    def _score_sessions(self, events: pd.DataFrame, session_ids: pd.Index | None) -> pd.Series:
        """``predict_sessions`` without its checks: ``events`` hold the whole history of the sessions' users."""
        prefix = session_prefix(events)
        ex = session_examples(events, self.devices_, prefix=prefix)
        if session_ids is not None:
            ex = ex[ex.index.isin(session_ids)]
        if ex.empty:
            return pd.Series(dtype="float64", name="p_session_purchase")
        X = self.session_scaler_.transform(ex)
        p = self.session_calibration_.apply(predict_logits(self.session_net_, self._session_sequences(events, ex.index, prefix=prefix), X))
        return pd.Series(p, index=ex.index, name="p_session_purchase")

    def explain(self, events: pd.DataFrame, user_id: str) -> dict[str, Any]:
        """Why this user's purchase intent is what it is, as data for the agent.

        Factors: feature ablation over the tabular features plus one factor for the token
        sequence (``recent_event_sequence``, value = tokens seen). Also the top-3 next
        categories with their shares, the session-intent probability of the latest sessions,
        the evidence sessions (all the user's own), and ``reasons``: the factors in words,
        merged and measured against the typical values (``reasons.py``).
        """
        self._check_fitted()
        user_id = str(user_id)
        mine = events[rows_of_users(events, [user_id])]
        if mine.empty:
            raise KeyError(f"unknown user id: {user_id}")
        users = pd.Index([user_id], name="user_id")
        asof = end_of_events(events)  # the same "as of" as predict_proba on these events
        feats, seqs = self._user_inputs(mine, users, asof)
        x = self.user_scaler_.transform(feats)[0]

        def score(batch: np.ndarray, q: Sequences = seqs) -> np.ndarray:  # the user's sequence beside each row
            return self.user_calibration_.apply(predict_logits(self.net_, q, batch))

        raw = feats.iloc[0].to_dict()
        names = self.user_scaler_.columns
        plan = plan_reasons(glossary=self.glossary(), names=names, raw=raw, x=x, baseline=self.baseline_row(self.user_scaler_, self.typical_),
                            typical=self.typical_)
        p_all = score(np.concatenate([ablation_batch(x), plan.rows]))  # one GRU pass for factors and reasons
        p = float(p_all[0])
        factors = ablation_factors_from(p_all[: len(names) + 1], raw, names, top_k=5)
        sequence = None
        if self.use_sequence:
            blank = Sequences(np.zeros_like(seqs.tokens), np.ones_like(seqs.lengths), users)
            p_blank = float(score(x[None, :], blank)[0])
            c = p - p_blank
            factors.append({"name": "recent_event_sequence", "value": int(seqs.lengths[0]), "direction": "raises" if c >= 0 else "lowers", "contribution": round(c, 4)})
            factors.sort(key=lambda f: -abs(f["contribution"]))
            sequence = (int(seqs.lengths[0]), p_blank)
        reasons = plan.reasons(p, p_all[len(names) + 1 :], sequence=sequence, ordering=self.reason_ordering, threshold=float(self.user_threshold_))
        whole = _whole_sessions(mine)  # the user's sessions, in order of their last event
        recent = whole.index[np.argsort(whole["session_end"].to_numpy(dtype="datetime64[ns]"), kind="stable")[-3:]]
        sessions = self._score_sessions(mine, recent)  # ``mine`` is the user's whole history
        return {
            "model": self.label,
            "user_id": user_id,
            "probability": round(p, 4),
            "threshold": round(float(self.user_threshold_), 4),
            "horizon_days": self.horizon_days,
            "asof": asof.isoformat(),
            "factors": factors[:6],
            "rules": [],
            "next_categories": next_categories(mine, user_id, k=3),
            "sessions": [{"session_id": str(k), "p_purchase": round(float(v), 4)} for k, v in sessions.items()],
            "evidence": user_evidence(mine, user_id),
            "reasons": reasons,
        }

    def explain_session(self, events: pd.DataFrame, session_id: str) -> dict[str, Any]:
        """Why one session looks like it will (not) end in a purchase: ablation factors over its prefix features."""
        self._check_fitted()
        session_id = str(session_id)
        rows = events[events["session_id"] == session_id]
        if rows.empty:
            raise KeyError(f"unknown session id: {session_id}")
        user_id = str(rows["user_id"].iloc[0])
        mine = events[rows_of_users(events, [user_id])]
        ex = session_examples(mine, self.devices_)
        if session_id not in ex.index:
            return {"model": self.label, "session_id": session_id, "user_id": user_id, "probability": None,
                    "factors": [], "rules": [], "evidence": [], "note": "the session opens with a checkout: nothing to judge before it"}
        ex = ex.loc[[session_id]]
        x = self.session_scaler_.transform(ex)[0]
        seqs = self._session_sequences(mine, ex.index)

        def score(batch: np.ndarray) -> np.ndarray:  # the session's sequence beside each row
            return self.session_calibration_.apply(predict_logits(self.session_net_, seqs, batch))

        p = float(score(x[None, :])[0])
        prefix = session_prefix(rows)
        counts = prefix["event"].value_counts()
        raw = ex.iloc[0].to_dict()
        return {
            "model": self.label,
            "session_id": session_id,
            "user_id": user_id,
            "probability": round(p, 4),
            "threshold": round(float(self.session_threshold_), 4),
            "factors": ablation_factors(score, x, raw, self.session_scaler_.columns, top_k=5),
            "rules": [],
            "evidence": [{"session_id": session_id, "ts": rows["ts"].min().isoformat(), "event": "prefix",
                          "detail": ", ".join(f"{int(v)} {k}" for k, v in counts.items()) + " before checkout"}],
            "reasons": build_reasons(glossary=self.session_glossary(), names=self.session_scaler_.columns, raw=raw, x=x,
                                     baseline=self.baseline_row(self.session_scaler_, self.session_typical_), score=score,
                                     typical=self.session_typical_, ordering=self.reason_ordering, threshold=float(self.session_threshold_)),
        }

    def glossary(self) -> Glossary:
        """The words for the user model's features: RFM, the past week's activity, the behaviour sentence."""
        return USER_GLOSSARY

    def session_glossary(self) -> Glossary:
        """The words for the session model's features (the devices it learned)."""
        return session_glossary(tuple(self.devices_))

    def typical_card(self) -> dict[str, Any]:
        """Both populations' typical values: the users' (active customers) and the sessions'."""
        return {"typical_values": typical_record(self.typical_, self.typical_population, self.typical_definition()),
                "session_typical_values": typical_record(self.session_typical_, "sessions",
                                                         "training sessions (ended before the cutoff), their events before checkout")}

    def _read_card(self, card: dict[str, Any]) -> None:
        self.typical_ = typical_from_card(card)
        self.session_typical_ = typical_from_card(card, "session_typical_values")

    # --- persistence --------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = {f"user.{k}": v for k, v in self.net_.state_dict().items()}
        state.update({f"session.{k}": v for k, v in self.session_net_.state_dict().items()})
        spec = {
            "horizon_days": self.horizon_days,
            "n_snapshots": self.n_snapshots,
            "snapshot_step_days": self.snapshot_step_days,
            "active_days": self.active_days,
            "n_categories": self.n_categories,
            "max_train_sessions": self.max_train_sessions,
            "session_max_len": self.session_max_len,
            "use_sequence": self.use_sequence,
            "settings": self.settings.to_dict(),
            "vocab": self.vocab_,
            "categories": self.categories_,
            "devices": self.devices_,
            "user_scaler": self.user_scaler_.to_dict(),
            "session_scaler": self.session_scaler_.to_dict(),
            "user_net": net_config(self.net_),
            "session_net": net_config(self.session_net_),
            "user_calibration": self.user_calibration_.to_dict(),
            "session_calibration": self.session_calibration_.to_dict(),
            "user_threshold": self.user_threshold_,
            "session_threshold": self.session_threshold_,
        }
        return state, spec

    @classmethod
    def _from_saved(cls, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> "IntentModel":
        m = cls(
            spec["horizon_days"], n_snapshots=spec["n_snapshots"], snapshot_step_days=spec["snapshot_step_days"],
            active_days=spec["active_days"], n_categories=spec["n_categories"], max_train_sessions=spec["max_train_sessions"],
            session_max_len=spec["session_max_len"], use_sequence=spec["use_sequence"], settings=TrainSettings(**spec["settings"]),
        )
        m.vocab_ = spec["vocab"]
        m.categories_ = list(spec["categories"])
        m.devices_ = list(spec["devices"])
        m.user_scaler_ = TabularScaler.from_dict(spec["user_scaler"])
        m.session_scaler_ = TabularScaler.from_dict(spec["session_scaler"])
        m.net_ = build_net(spec["user_net"])
        m.net_.load_state_dict({k[len("user."):]: v for k, v in state_dict.items() if k.startswith("user.")}, strict=True)
        m.session_net_ = build_net(spec["session_net"])
        m.session_net_.load_state_dict({k[len("session."):]: v for k, v in state_dict.items() if k.startswith("session.")}, strict=True)
        m.net_.eval()
        m.session_net_.eval()
        m.user_calibration_ = Calibration(**spec["user_calibration"])
        m.session_calibration_ = Calibration(**spec["session_calibration"])
        m.user_threshold_ = float(spec["user_threshold"])
        m.session_threshold_ = float(spec["session_threshold"])
        return m


# --- helpers --------------------------------------------------------------------------------


def _users(events: pd.DataFrame, user_ids: Sequence[str] | None) -> pd.Index:
    if user_ids is None:
        return pd.Index(sorted(events["user_id"].astype(str).unique()), name="user_id")
    users = pd.Index([str(u) for u in user_ids], name="user_id")
    unknown = users.difference(pd.Index(events["user_id"].astype(str).unique()))
    if len(unknown):
        raise KeyError(f"unknown user id(s): {', '.join(map(str, unknown[:5]))}")
    return users


def _stack(parts: list[Sequences]) -> Sequences:
    return Sequences(
        np.concatenate([p.tokens for p in parts]), np.concatenate([p.lengths for p in parts]), pd.RangeIndex(sum(len(p.lengths) for p in parts))
    )


def _latest_fraction(order_key: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the rows with the largest ``order_key`` (the most recent ``fraction``), at least one row."""
    n = len(order_key)
    k = max(1, int(round(n * fraction)))
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(order_key, kind="stable")[n - k :]] = True
    return mask


def _top_values(events: pd.DataFrame, column: str, k: int) -> list[str]:
    if column not in events.columns:
        return []
    return sorted(events[column].dropna().astype(str).value_counts().index[:k].tolist())
