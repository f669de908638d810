"""Named fraud/abuse rule signals as pure functions over event tables, each citing the ids behind it.

A rule answers one question a risk officer would ask ("did this user place many tiny
orders in a burst?") with a value, a threshold, a fired flag and the evidence (order or
session ids). The risk model uses the values as features and its explanations cite the
rules that fired, so every rule here is deterministic and cheap.

All rules except :func:`linked_accounts` look at one user's rows at a time, so they run per
user group on Spark too; ``linked_accounts`` needs every user who might share a device or IP.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shopsight.behavior.events import arrow_strings
from shopsight.behavior.features import sorted_by_user_then_time

RULE_NAMES: tuple[str, ...] = (
    "velocity",
    "new_device_high_value",
    "card_testing_burst",
    "refund_rate",
    "linked_accounts",
    "bot_velocity",
)

USER_COLUMNS = ["value", "fired", "evidence", "detail"]
ORDER_COLUMNS = ["user_id", "value", "fired", "evidence", "detail"]


@dataclass(frozen=True)
class RuleThresholds:
    """Where each rule fires. Defaults suit a web shop with prices in whole currency units."""

    velocity_orders: int = 5  # orders by one user within velocity_window
    velocity_window: pd.Timedelta = pd.Timedelta(hours=24)
    high_value_amount: float = 250.0  # an order at least this large counts as high value ...
    high_value_ratio: float = 3.0  # ... or this many times the user's earlier mean order
    card_testing_amount: float = 5.0  # an order at most this large is a "test" charge
    card_testing_orders: int = 4  # test charges within card_testing_window
    card_testing_window: pd.Timedelta = pd.Timedelta(hours=1)
    refund_rate: float = 0.5  # refunds per purchased line
    refund_min_purchases: int = 2
    linked_users: int = 2  # other accounts sharing a device id or IP
    linked_max_share: float = 0.02  # identifiers used by more users than this share ...
    linked_min_common: int = 10  # ... and than this many are common (a carrier NAT, "mobile")
    bot_events_per_minute: float = 12.0
    bot_min_events: int = 15  # sessions shorter than this are not judged for speed


@dataclass(frozen=True)
class RuleResult:
    """One rule over an event table.

    Attributes:
        name: the rule's name (one of RULE_NAMES).
        threshold: the value at or above which the rule fires.
        users: index user_id; columns value (float), fired (bool), evidence (list of order
            or session ids), detail (short text with the numbers behind the value).
        orders: index order_id, same columns plus user_id, for rules judged per order;
            None for rules that only make sense per user.
    """

    name: str
    threshold: float
    users: pd.DataFrame
    orders: pd.DataFrame | None = field(default=None)


# --- shared tables ------------------------------------------------------------------------


def order_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per order: order_id, user_id, session_id, ts, amount, n_lines, device, ip, country, payment.

    Orders are the purchase events grouped by ``order_id``; a source without order ids has
    one order per session with purchases (the order id is then the session id). Per order:
    the first non-missing user/session/identity value, the earliest ts, the summed amount.

    Written with numpy over integer order codes: one user's explanation builds this table on
    a hundred rows, where each pandas groupby cost more than the whole computation.
    """
    is_buy = (events["event"] == "purchase").to_numpy(dtype=bool, na_value=False)
    if not is_buy.any():
        return _no_orders().copy()
    identity = [c for c in ("device", "ip", "country", "payment") if c in events.columns]
    buys = events.loc[is_buy, [c for c in ("order_id", "user_id", "session_id", "ts", "price", "quantity") if c in events.columns] + identity]
    key = buys["order_id"] if "order_id" in buys.columns else pd.Series(pd.NA, index=buys.index, dtype="string")
    key = key.fillna(buys["session_id"]).astype("string")
    codes, uniques = pd.factorize(key, sort=False)  # first-appearance order, as groupby(sort=False)
    n = len(uniques)
    rows = np.arange(len(buys))
    ts_ns = buys["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    first_ts = np.full(n, np.iinfo("int64").max)
    np.minimum.at(first_ts, codes, ts_ns)
    amount = (buys["price"].fillna(0.0) * buys["quantity"]).to_numpy(dtype="float64")
    total = np.zeros(n)
    np.add.at(total, codes, amount)  # row order within each order, like groupby's sum

    def first_valid(col: str) -> Any:
        values = buys[col]
        ok = values.notna().to_numpy(dtype=bool)
        pos = np.full(n, len(buys))
        np.minimum.at(pos, codes[ok], rows[ok])
        return values.array.take(np.where(pos < len(buys), pos, -1), allow_fill=True)

    data: dict[str, Any] = {
        "user_id": first_valid("user_id"),
        "session_id": first_valid("session_id"),
        "ts": pd.to_datetime(first_ts, utc=True).astype(buys["ts"].dtype),
        "amount": total,
        "n_lines": np.bincount(codes, minlength=n).astype("int64"),
    }
    for opt in ("device", "ip", "country", "payment"):
        data[opt] = first_valid(opt) if opt in identity else pd.array([pd.NA] * n, dtype="string")
    out = pd.DataFrame(data, index=pd.Index(uniques, name="order_id"))
    return out.sort_values(["user_id", "ts"], kind="stable")


@functools.cache
def _no_orders() -> pd.DataFrame:
    """The order table of events without purchases (built once: a user without orders is common,
    and building an empty frame column by column cost more than their whole explanation's rules)."""
    dtypes = {"ts": "datetime64[ns, UTC]", "amount": "float64", "n_lines": "int64"}
    cols = ["order_id", "user_id", "session_id", "ts", "amount", "n_lines", "device", "ip", "country", "payment"]
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "string")) for c in cols}).set_index("order_id")


def _empty_users(users: pd.Index) -> pd.DataFrame:
    n = len(users)
    index = pd.Index(users, name="user_id")
    evidence = np.empty(n, dtype=object)
    for i in range(n):
        evidence[i] = []  # one list per user: the rules append to them
    return pd.DataFrame(
        {"value": np.zeros(n), "fired": np.zeros(n, dtype=bool), "evidence": evidence,
         "detail": pd.Series(np.full(n, "", dtype=object), dtype="str", index=index)},
        index=index, copy=False,
    )


def _all_users(events: pd.DataFrame, users: pd.Index | None = None) -> pd.Index:
    """The users of ``events``, sorted (``users``: already found by the caller, as :func:`_run_rules` does once for every rule)."""
    if users is not None:
        return users
    ids = events["user_id"].to_numpy(dtype=object, na_value=None)
    return pd.Index(sorted({u for u in ids if u is not None}), name="user_id")


def _window_counts(orders: pd.DataFrame, window: pd.Timedelta) -> pd.Series:
    """For each order, how many orders of the same user fall in (ts - window, ts]."""
    counts = np.zeros(len(orders), dtype="int64")
    ts = orders["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    users = orders["user_id"].to_numpy()
    w = window.value
    # Orders are sorted by user then time, so each user's rows are one contiguous block.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    for a, b in zip(starts, ends):
        t = ts[a:b]
        counts[a:b] = np.arange(1, b - a + 1) - np.searchsorted(t, t - w, side="right")
    return pd.Series(counts, index=orders.index)


def _burst_rule(
    name: str,
    events: pd.DataFrame,
    orders: pd.DataFrame,
    window: pd.Timedelta,
    threshold: int,
    what: str,
    users_of: pd.Index | None = None,
) -> RuleResult:
    """Max number of ``orders`` by one user inside any ``window``; evidence = the orders of that burst."""
    users = _empty_users(_all_users(events, users_of))
    if orders.empty:
        order_out = pd.DataFrame(columns=ORDER_COLUMNS, index=pd.Index([], name="order_id"))
    else:
        if not sorted_by_user_then_time(orders):  # order_table's are (and a part of them): no sort to pay
            orders = orders.sort_values(["user_id", "ts"], kind="stable")
        counts = _window_counts(orders, window)
        order_out = pd.DataFrame(
            {"user_id": orders["user_id"], "value": counts.astype("float64"), "fired": counts >= threshold}
        )
        # The orders of a window ending at row i are the count[i] rows up to i (rows are sorted
        # by user then time), so a burst's evidence is a slice, not a search; each user's peak is
        # the first row with their largest count. Plain numpy per user block, so one user's
        # verdict is computed exactly as inside the whole table.
        c = counts.to_numpy()
        u = orders["user_id"].to_numpy(dtype=object)
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        ends = np.r_[starts[1:], len(u)]
        ids = orders.index.astype(str).to_numpy()
        amount = orders["amount"].to_numpy(dtype="float64")
        ts = orders["ts"]
        hours = window.total_seconds() / 3600
        value = users["value"].to_numpy(dtype="float64").copy()
        fired = users["fired"].to_numpy(dtype=bool).copy()
        evidence, detail = list(users["evidence"]), list(users["detail"])
        for lo, hi, j in zip(starts, ends, users.index.get_indexer(u[starts])):
            p = lo + int(np.argmax(c[lo:hi]))
            n = int(c[p])
            evidence[j] = list(ids[p - n + 1 : p + 1])
            value[j] = float(n)
            fired[j] = n >= threshold
            detail[j] = (
                f"{n} {what} within {hours:g} h ending {ts.iat[p]:%Y-%m-%d %H:%M}, "
                f"total {amount[p - n + 1 : p + 1].sum():.2f}"
            )
        users["value"], users["fired"], users["evidence"], users["detail"] = value, fired, evidence, detail
        start = np.arange(len(orders)) - counts.to_numpy() + 1
        order_out["evidence"] = [
            list(ids[a : b + 1]) if f else [ids[b]] for a, b, f in zip(start, range(len(orders)), order_out["fired"])
        ]
        order_out["detail"] = [f"{int(v)} {what} within {hours:g} h up to this one" for v in order_out["value"]]
    return RuleResult(name=name, threshold=float(threshold), users=users, orders=order_out)


# --- the rules ------------------------------------------------------------------------------


def velocity(
    events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds(), *, orders: pd.DataFrame | None = None,
    users: pd.Index | None = None,
) -> RuleResult:
    """Order velocity: the most orders one user placed within ``velocity_window``.

    Value per user: that count; per order: the user's orders in the window ending at it.
    Evidence: the order ids of the busiest window. ``orders``: ``order_table(events)`` if
    already built.
    """
    return _burst_rule(
        "velocity",
        events,
        order_table(events) if orders is None else orders,
        thresholds.velocity_window,
        thresholds.velocity_orders,
        "orders",
        users,
    )


def card_testing_burst(
    events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds(), *, orders: pd.DataFrame | None = None,
    users: pd.Index | None = None,
) -> RuleResult:
    """Card testing: many tiny orders (≤ ``card_testing_amount``) in a short burst.

    Fraudsters check stolen cards with small charges before a large one. Value: the most
    tiny orders within ``card_testing_window``; evidence: those order ids. ``orders``:
    ``order_table(events)`` if already built.
    """
    orders = order_table(events) if orders is None else orders
    small = orders[orders["amount"] <= thresholds.card_testing_amount]
    return _burst_rule(
        "card_testing_burst",
        events,
        small,
        thresholds.card_testing_window,
        thresholds.card_testing_orders,
        f"orders of at most {thresholds.card_testing_amount:g}",
        users,
    )


def new_device_high_value(
    events: pd.DataFrame,
    thresholds: RuleThresholds = RuleThresholds(),
    identity_columns: tuple[str, ...] = ("device", "country"),
    *,
    orders: pd.DataFrame | None = None,
    users: pd.Index | None = None,
) -> RuleResult:
    """A high-value order from a device and a country the user had never used before.

    The classic account-takeover signature. An order is "new identity" when every one of
    ``identity_columns`` present (device and country) of its session is a value that no
    earlier session of the same user had: a shopper on a second device at home or abroad on
    their own phone is not new. A user's first session is not judged (everything is new then). It is high value when
    its amount is ≥ ``high_value_amount`` or ≥ ``high_value_ratio`` × the user's earlier
    mean order. Value per order: amount / max(earlier mean, 1) when new, else 0; per
    user: the largest such value. Evidence: the order ids that fired. ``orders``:
    ``order_table(events)`` if already built.
    """
    users = _empty_users(_all_users(events, users))
    orders = order_table(events) if orders is None else orders
    cols = [c for c in identity_columns if c in events.columns]
    order_out = pd.DataFrame(columns=ORDER_COLUMNS, index=pd.Index([], name="order_id"))
    if orders.empty or not cols:
        return RuleResult("new_device_high_value", thresholds.high_value_ratio, users, order_out)

    # Numpy over integer user/session codes, like order_table: this runs per request for one user.
    ts_ns = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    user_code = users.index.get_indexer(events["user_id"])
    o_user = users.index.get_indexer(orders["user_id"])
    # First time each (user, column, value) was seen, at session granularity: a device that
    # first appears in the order's own session is new for that order.
    s_code, sessions = pd.factorize(events["session_id"], sort=False)
    sess_start = np.full(len(sessions), np.iinfo("int64").max)
    np.minimum.at(sess_start, s_code[s_code >= 0], ts_ns[s_code >= 0])
    order_sess_start = sess_start[pd.Index(sessions).get_indexer(orders["session_id"])]
    first_session = np.full(len(users), np.iinfo("int64").max)
    np.minimum.at(first_session, user_code[user_code >= 0], ts_ns[user_code >= 0])
    is_new = np.ones(len(orders), dtype=bool)
    new_what: list[list[str]] = [[] for _ in range(len(orders))]
    for col in cols:
        v_code, values = pd.factorize(events[col], sort=False)
        ok = (v_code >= 0) & (user_code >= 0)
        width = len(values) + 1
        keys, inv = np.unique(user_code[ok].astype("int64") * width + v_code[ok], return_inverse=True)
        first = np.full(len(keys), np.iinfo("int64").max)
        np.minimum.at(first, inv, ts_ns[ok])
        o_val = pd.Index(values).get_indexer(orders[col])
        o_key = o_user.astype("int64") * width + o_val
        at = np.minimum(np.searchsorted(keys, o_key), max(len(keys) - 1, 0))
        known = (o_val >= 0) & (len(keys) > 0) & (keys[at] == o_key if len(keys) else False)
        new_here = known & (first[at] >= order_sess_start)
        is_new &= new_here
        for i in np.flatnonzero(new_here):
            new_what[i].append(f"{col} {orders[col].iat[i]}")
    is_new &= order_sess_start > first_session[o_user]

    # The user's mean order before this one (expanding, excluding the current order); orders
    # are sorted by user then time, so each user's orders are one contiguous block.
    amount = orders["amount"].to_numpy(dtype="float64")
    prior_mean = np.full(len(orders), np.nan)
    starts = np.flatnonzero(np.r_[True, o_user[1:] != o_user[:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(orders)]):
        before = np.cumsum(amount[lo:hi])[:-1]
        prior_mean[lo + 1 : hi] = before / np.arange(1, hi - lo)
    has_prior = ~np.isnan(prior_mean)
    ratio = amount / np.maximum(np.where(has_prior, prior_mean, 0.0), 1.0)
    high = (amount >= thresholds.high_value_amount) | (has_prior & (ratio >= thresholds.high_value_ratio))
    fired = is_new & high
    value = np.where(is_new, ratio, 0.0)
    order_out = pd.DataFrame({"user_id": orders["user_id"], "value": value, "fired": fired})
    ids = [str(o) for o in orders.index]
    order_out["evidence"] = [[o] if f else [] for o, f in zip(ids, fired)]
    details = [
        (
            f"order of {a:.2f} from new {', '.join(w)}"
            + (f", {r:.1f}x the earlier mean {m:.2f}" if not np.isnan(m) else ", no earlier orders")
        )
        if n
        else f"order of {a:.2f} from known device/country"
        for a, w, n, r, m in zip(amount, new_what, is_new, ratio, prior_mean)
    ]
    order_out["detail"] = details
    top = users["value"].to_numpy(dtype="float64").copy()
    np.maximum.at(top, o_user, value)
    users["value"] = top
    any_fired = np.zeros(len(users), dtype=bool)
    any_fired[o_user[fired]] = True
    users["fired"] = any_fired
    evidence = list(users["evidence"])
    detail = list(users["detail"])
    fired_details: dict[int, list[str]] = {}
    for i in np.flatnonzero(fired):
        evidence[o_user[i]].append(ids[i])
        fired_details.setdefault(int(o_user[i]), []).append(details[i])
    for u, texts in fired_details.items():
        detail[u] = f"{len(texts)} high-value orders from a new device/country: " + "; ".join(texts[:3])
    users["evidence"] = evidence
    users["detail"] = detail
    return RuleResult("new_device_high_value", thresholds.high_value_ratio, users, order_out)


def refund_rate(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds(), *, users: pd.Index | None = None) -> RuleResult:
    """Refunds per purchased line (the same definition as ``user_features``' refund_rate).

    Fires at ≥ ``refund_rate`` once the user has ≥ ``refund_min_purchases`` purchase lines.
    Evidence: the refunded order ids (session ids where refunds carry no order id).
    """
    users = _empty_users(_all_users(events, users))
    ev = events["event"].to_numpy(dtype=object, na_value="")
    codes = users.index.get_indexer(events["user_id"])
    known = codes >= 0
    n_buy = np.bincount(codes[known & (ev == "purchase")], minlength=len(users))
    is_ref = known & (ev == "refund")
    n_ref = np.bincount(codes[is_ref], minlength=len(users))
    rate = n_ref / np.maximum(n_buy, 1)
    users["value"] = rate.astype("float64")
    users["fired"] = (rate >= thresholds.refund_rate) & (n_buy >= thresholds.refund_min_purchases)
    if is_ref.any():
        refunds_df = events[is_ref]
        ref_id = refunds_df["order_id"] if "order_id" in refunds_df.columns else refunds_df["session_id"]
        ref_id = ref_id.fillna(refunds_df["session_id"]).astype("string")
        evidence = list(users["evidence"])
        for u, ref in zip(codes[is_ref], ref_id):
            if str(ref) not in evidence[u]:
                evidence[u].append(str(ref))  # first-seen order, each id once
        users["evidence"] = evidence
    users["detail"] = [f"{r} refunds for {b} purchased lines" for r, b in zip(n_ref, n_buy)]
    return RuleResult("refund_rate", thresholds.refund_rate, users, None)


def linked_accounts(
    events: pd.DataFrame,
    thresholds: RuleThresholds = RuleThresholds(),
    identity_columns: tuple[str, ...] = ("ip", "device"),
    population: int | None = None,
    *,
    users: pd.Index | None = None,
) -> RuleResult:
    """How many other accounts share a device id or IP address with this user.

    Identifiers used by more than ``linked_max_share`` of all users (and by more than
    ``linked_min_common`` users) are treated as common — a carrier NAT or a generic device
    label such as "mobile" — and ignored, so only specific identifiers link accounts. Needs
    all users' events (it is the one rule that is not per user). Evidence: the user's
    session ids that used a shared identifier; ``detail`` names how many accounts.

    ``population`` is the number of users the share is taken of when ``events`` holds only
    the users around one account (see ``evaluate_rules_for_users``); default: the users here.
    """
    users = _empty_users(_all_users(events, users))
    cap = common_cap(thresholds, population or max(len(users), 1))
    pairs: list[pd.DataFrame] = []
    for col in identity_columns:
        if col not in events.columns:
            continue
        sub = events.loc[events[col].notna(), ["user_id", col, "session_id"]].drop_duplicates(["user_id", col])
        n_per_id = sub.groupby(col)["user_id"].nunique()
        specific = n_per_id[(n_per_id > 1) & (n_per_id <= cap)].index
        sub = sub[sub[col].isin(specific)]
        if not sub.empty:
            pairs.append(sub.assign(_key=col + ":" + sub[col].astype(str))[["user_id", "_key"]])
    if not pairs:
        return RuleResult("linked_accounts", float(thresholds.linked_users), users, None)
    keyed = pd.concat(pairs, ignore_index=True)
    linked = keyed.merge(keyed, on="_key", suffixes=("", "_other"))
    linked = linked[linked["user_id"] != linked["user_id_other"]]
    n_linked = linked.groupby("user_id")["user_id_other"].nunique()
    users.loc[n_linked.index, "value"] = n_linked.astype("float64")
    users["fired"] = users["value"] >= thresholds.linked_users
    shared_keys = keyed.groupby("user_id")["_key"].agg(set)
    # Evidence: this user's sessions that used a shared identifier.
    sess_rows = []
    for col in identity_columns:
        if col in events.columns:
            sess_rows.append(
                events.loc[events[col].notna(), ["user_id", "session_id"]].assign(
                    _key=col + ":" + events.loc[events[col].notna(), col].astype(str)
                )
            )
    sessions = pd.concat(sess_rows, ignore_index=True)
    sessions = sessions[sessions["user_id"].isin(n_linked.index)]
    for user, grp in sessions.groupby("user_id"):
        keys = shared_keys.get(user, set())
        hit = grp[grp["_key"].isin(keys)]
        users.at[user, "evidence"] = list(dict.fromkeys(map(str, hit["session_id"])))[:20]
        kinds = sorted({k.split(":", 1)[0] for k in keys})
        users.at[user, "detail"] = f"shares {'/'.join(kinds)} with {int(n_linked[user])} other accounts"
    return RuleResult("linked_accounts", float(thresholds.linked_users), users, None)


def bot_velocity(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds(), *, users: pd.Index | None = None) -> RuleResult:
    """Bot-like speed: the fastest session's events per minute (sessions of ≥ ``bot_min_events``).

    People browse at a few events a minute; scripts at dozens. Evidence: the session ids at
    or above the threshold (or the fastest session when none is). Numpy over session codes,
    like ``order_table``.
    """
    users = _empty_users(_all_users(events, users))
    if events.empty:
        return RuleResult("bot_velocity", thresholds.bot_events_per_minute, users, None)
    codes, sessions = pd.factorize(events["session_id"], sort=False)  # groupby(sort=False) order
    ok = codes >= 0
    codes = codes[ok]
    k = len(sessions)
    ts_ns = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")[ok]
    n = np.bincount(codes, minlength=k)
    start = np.full(k, np.iinfo("int64").max)
    np.minimum.at(start, codes, ts_ns)
    end = np.full(k, np.iinfo("int64").min)
    np.maximum.at(end, codes, ts_ns)
    user_codes = users.index.get_indexer(events["user_id"][ok])
    sess_user = user_codes[_first_rows(codes, k, user_codes >= 0)]
    # A session of n events spans n-1 gaps; floor the span at one second per gap so that
    # identical timestamps do not divide by zero.
    minutes = np.maximum(pd.to_timedelta(end - start, unit="ns").total_seconds().to_numpy() / 60.0, np.maximum(n - 1, 1) / 60.0)
    rate = np.where(n >= thresholds.bot_min_events, n / minutes, 0.0)
    order = np.argsort(-rate, kind="stable")  # fastest first; ties in session order
    _, first = np.unique(sess_user[order], return_index=True)
    best = order[first]  # each user's fastest session
    value = users["value"].to_numpy(dtype="float64").copy()
    value[sess_user[best]] = rate[best]
    users["value"] = value
    users["fired"] = value >= thresholds.bot_events_per_minute
    evidence: list[list[str]] = [[] for _ in range(len(users))]
    for j in np.flatnonzero(rate >= thresholds.bot_events_per_minute):
        evidence[sess_user[j]].append(str(sessions[j]))
    detail = list(users["detail"])
    for j in best:
        u = sess_user[j]
        if not evidence[u] and rate[j] > 0:
            evidence[u] = [str(sessions[j])]
        detail[u] = f"fastest session {sessions[j]}: {int(n[j])} events at {rate[j]:.1f}/min"
    users["evidence"] = evidence
    users["detail"] = detail
    return RuleResult("bot_velocity", thresholds.bot_events_per_minute, users, None)


def _first_rows(codes: np.ndarray, n_groups: int, ok: np.ndarray | None = None) -> np.ndarray:
    """Position of each group's first row (among the ``ok`` rows), like groupby's ``first``; groups without one get 0."""
    rows = np.arange(len(codes))
    if ok is not None:
        codes, rows = codes[ok], rows[ok]
    pos = np.full(n_groups, len(rows) and rows.max() + 1)
    np.minimum.at(pos, codes, rows)
    return np.where(pos > (rows.max() if len(rows) else -1), 0, pos)


RULES: dict[str, Callable[..., RuleResult]] = {
    "velocity": velocity,
    "new_device_high_value": new_device_high_value,
    "card_testing_burst": card_testing_burst,
    "refund_rate": refund_rate,
    "linked_accounts": linked_accounts,
    "bot_velocity": bot_velocity,
}


ORDER_RULES = ("velocity", "new_device_high_value", "card_testing_burst")  # rules that read order_table


def _run_rules(
    events: pd.DataFrame, thresholds: RuleThresholds, names: Sequence[str], orders: pd.DataFrame | None = None
) -> dict[str, RuleResult]:
    """The named rules over ``events``, building the order table once for the rules that read it."""
    if orders is None and any(n in ORDER_RULES for n in names):
        orders = order_table(events)
    users = _all_users(events)  # found once for every rule
    return {n: RULES[n](events, thresholds, orders=orders, users=users) if n in ORDER_RULES else RULES[n](events, thresholds, users=users)
            for n in names}


def evaluate_rules(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> dict[str, RuleResult]:
    """Run every rule in RULE_NAMES over ``events``."""
    return _run_rules(events, thresholds, RULE_NAMES)


def evaluate_rules_for_users(
    events: pd.DataFrame,
    users: Sequence[str],
    thresholds: RuleThresholds = RuleThresholds(),
    *,
    rows: np.ndarray | None = None,
    orders: pd.DataFrame | None = None,
    linked: RuleResult | None = None,
) -> dict[str, RuleResult]:
    """Every rule for a few ``users`` without judging the whole table: the fast path of explain/predict.

    Per-user rules see only these users' events; ``linked_accounts`` also sees the rows of
    every identifier they share with other accounts (only the identifiers that are not
    common), so the verdicts equal those of ``evaluate_rules(events)``. ``rows``:
    ``rows_of_users(events, users)`` if already computed; ``orders``: ``order_table`` of those rows;
    ``linked``: the ``linked_accounts`` verdicts of these users if already found (Spark finds who
    shares an identifier with a join, :func:`linked_accounts_shared`).
    """
    users = [str(u) for u in users]
    is_mine = rows_of_users(events, users) if rows is None else rows
    mine = events[is_mine]
    out = _run_rules(mine, thresholds, [n for n in RULE_NAMES if n != "linked_accounts"], orders)
    if linked is None:
        linked = _linked_accounts_for(events, mine, thresholds)
    out["linked_accounts"] = RuleResult(linked.name, linked.threshold, linked.users.reindex(pd.Index(users, name="user_id")), None)
    return {name: out[name] for name in RULE_NAMES}


def rows_of_users(events: pd.DataFrame, users: Sequence[str]) -> np.ndarray:
    """Boolean mask over ``events`` marking the rows of ``users`` (see :func:`_value_rows`)."""
    mask = np.zeros(len(events), dtype=bool)
    for rows in _value_rows(events["user_id"], list(dict.fromkeys(str(u) for u in users))):
        mask[rows] = True
    return mask


def _value_positions(column: pd.Series, values: Sequence[str]) -> np.ndarray:
    """Per row, the position in ``values`` (distinct) of the row's value; -1 for any other value or a missing one.

    One pass for all the values: the rows of each are then ``positions == j`` in numpy, where a
    pass per value over a 440k-row string column costs 2 ms each.
    """
    arrow = arrow_strings(column)
    if arrow is not None:
        found = pc.index_in(arrow, value_set=pa.array([str(v) for v in values], type=arrow.type))
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype("int64", copy=False)
    return pd.Index(list(values)).get_indexer(column).astype("int64", copy=False)


@dataclass
class _ColumnMemo:
    """What the one-user paths learned about one immutable pyarrow column (see :func:`_memo`)."""

    ref: Any  # weak reference to the arrow array
    lookups: int = 0
    n_distinct: int | None = None
    uniques: pd.Index | None = None  # the column's distinct values; position = code
    order: np.ndarray | None = None  # row positions sorted by code, ascending within a code
    bounds: np.ndarray | None = None  # order[bounds[c]:bounds[c + 1]] are the rows of code c


_MEMO: dict[int, _ColumnMemo] = {}  # id(arrow array) -> memo; at most _MEMO_SIZE entries
_MEMO_SIZE = 6


def _memo(column: pd.Series) -> _ColumnMemo | None:
    """The memo of a pyarrow-backed column, None for other storages.

    Sound because pyarrow arrays are immutable: the same array object always holds the same
    values, and an edit to the column puts a new array behind it. Only weak references are
    kept, so a memo never keeps a table alive.
    """
    arrow = arrow_strings(column)
    if arrow is None:
        return None
    memo = _MEMO.get(id(arrow))
    if memo is None or memo.ref() is not arrow:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(_memo_to_evict())
        memo = _MEMO[id(arrow)] = _ColumnMemo(weakref.ref(arrow))
    return memo


def _memo_to_evict() -> int:
    """The memo to drop when full: one whose array is gone, else the oldest without an index, else the oldest.

    ``score_order`` looks up columns of a fresh copy of the table on every call; those one-off
    memos must not push out the index of the table the agent keeps asking about.
    """
    for wanted in (lambda m: m.ref() is None, lambda m: m.order is None):
        key = next((k for k, m in _MEMO.items() if wanted(m)), None)
        if key is not None:
            return key
    return next(iter(_MEMO))


def _n_distinct(column: pd.Series) -> int:
    """``column.nunique()``, remembered for a pyarrow-backed column (2.5 ms on 440k rows, paid by every explain)."""
    memo = _memo(column)
    if memo is None:
        return int(column.nunique())
    if memo.n_distinct is None:
        memo.n_distinct = int(column.nunique())
    return memo.n_distinct


def _value_rows(column: pd.Series, values: Sequence[str]) -> list[np.ndarray]:
    """Per value of ``values`` (distinct), the ascending row positions holding it.

    The first lookup on a column scans it once for all the values. A pyarrow-backed column
    looked up again (an agent or bot explaining user after user on one table) gets an index,
    built once (factorize and a stable sort: ~40 ms on 440k rows): from then on a lookup reads
    only the rows it returns, so one user's explain no longer grows with the table.
    """
    memo = _memo(column)
    if memo is not None:
        memo.lookups += 1
        if memo.order is None and memo.lookups >= 2:
            codes, uniques = pd.factorize(column)  # missing values: -1, sorted first below
            order = np.argsort(codes, kind="stable")
            counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
            memo.bounds = np.concatenate([[0], np.cumsum(counts)]) + int((codes < 0).sum())
            memo.uniques, memo.order = pd.Index(uniques), order
        if memo.order is not None:
            at = memo.uniques.get_indexer([str(v) for v in values])
            return [memo.order[memo.bounds[c] : memo.bounds[c + 1]] if c >= 0 else np.zeros(0, dtype=memo.order.dtype) for c in at]
    positions = _value_positions(column, values)
    hits = np.flatnonzero(positions >= 0)
    if len(values) == 1:
        return [hits]
    hit_positions = positions[hits]
    return [hits[hit_positions == j] for j in range(len(values))]


def _distinct_users(user_col: pd.Series, rows: np.ndarray, enough: int) -> int:
    """Distinct users among ``rows`` (positions); may stop counting once past ``enough``."""
    step = 4096
    while True:
        n = int(user_col.iloc[rows[:step]].nunique())
        if n > enough or step >= len(rows):
            return n
        step *= 8


def common_cap(thresholds: RuleThresholds, n_users: int) -> int:
    """The most users an identifier may have and still link accounts: more, and it is common
    (a carrier NAT, "mobile"): ``linked_max_share`` of the ``n_users``, at least ``linked_min_common``."""
    return max(int(thresholds.linked_max_share * n_users), thresholds.linked_min_common)


def _linked_accounts_for(events: pd.DataFrame, mine: pd.DataFrame, thresholds: RuleThresholds) -> RuleResult:
    """``linked_accounts`` for the users of ``mine``, reading only the rows of their specific identifiers.

    An identifier links accounts when 2..cap users share it (:func:`common_cap` of all users).
    A generic one ("mobile") has thousands of users: counting stops once past the cap, and all
    users are counted only when that is needed. Value, evidence and detail are then those of
    :func:`linked_accounts` over ``events`` (the tests hold the two to the same verdicts).
    """
    cols = [c for c in LINK_COLUMNS if c in events.columns]
    user_col = events["user_id"]
    n_all: int | None = None
    shared: dict[tuple[str, object], np.ndarray] = {}  # (column, specific identifier) -> the users holding it
    for col in cols:
        values = list(mine[col].dropna().unique())
        if not values:
            continue
        for value, rows in zip(values, _value_rows(events[col], values)):
            n = _distinct_users(user_col, rows, thresholds.linked_min_common)
            if n > thresholds.linked_min_common:
                if n_all is None:
                    n_all = _n_distinct(user_col)
                cap = common_cap(thresholds, n_all)
                n = _distinct_users(user_col, rows, cap)
                if n > cap:
                    continue  # common: the rule ignores it
            if n > 1:
                shared[(col, value)] = user_col.iloc[rows].dropna().unique()
    return linked_accounts_shared(mine, shared, thresholds)


LINK_COLUMNS: tuple[str, ...] = ("ip", "device")  # linked_accounts' identity columns, in evidence order


def linked_accounts_shared(
    mine: pd.DataFrame, shared: dict[tuple[str, object], Sequence[str]], thresholds: RuleThresholds = RuleThresholds()
) -> RuleResult:
    """``linked_accounts`` for the users of ``mine`` (all their events), given who holds each identifier.

    ``shared`` maps each specific identifier ``(column, value)`` that one of these users has
    (2..:func:`common_cap` users hold it) to the ids of every user holding it; identifiers not
    in it are ignored. Whoever finds them (:func:`_linked_accounts_for` over one table, or a
    join on Spark: ``behavior/spark.py``), the verdicts are those of :func:`linked_accounts`.
    """
    cols = [c for c in LINK_COLUMNS if c in mine.columns]
    users = _empty_users(_all_users(mine))
    shared = {k: v for k, v in shared.items() if k[0] in cols}
    if not shared:
        return RuleResult("linked_accounts", float(thresholds.linked_users), users, None)
    # Numpy over the rows that hold a shared identifier, grouped by user: a pass over every row
    # per user cost more than the rest of scoring a few thousand users.
    user_code = users.index.get_indexer(mine["user_id"].astype(object))
    own_session = mine["session_id"].to_numpy(dtype=object, na_value=None)
    hits: dict[str, np.ndarray] = {}  # per column: each row's position among the column's shared values, -1 for none
    for col in cols:
        values = [v for c, v in shared if c == col]
        if values:
            at = pd.Index(values).get_indexer(mine[col].astype(object))
            hits[col] = np.where(at >= 0, at, -1)
    value = users["value"].to_numpy(dtype="float64").copy()
    evidence, detail = list(users["evidence"]), list(users["detail"])
    per_col_values = {col: [v for c, v in shared if c == col] for col in hits}
    holders = {col: [shared[(col, v)] for v in per_col_values[col]] for col in hits}
    rows_with = np.zeros(len(mine), dtype=bool)
    for at in hits.values():
        rows_with |= at >= 0
    rows_with &= user_code >= 0
    idx = np.flatnonzero(rows_with)
    idx = idx[np.argsort(user_code[idx], kind="stable")]  # by user, each user's rows in row order
    owners, starts = np.unique(user_code[idx], return_index=True)
    for j, mine_rows in zip(owners, np.split(idx, starts[1:])):
        user = users.index[j]
        others: set[str] = set()
        kinds = set()
        sessions = []
        for col, at in hits.items():  # as the rule: sessions on a shared ip (in row order), then on a shared device
            mine_at = at[mine_rows]
            used = mine_rows[mine_at >= 0]
            if not len(used):
                continue
            kinds.add(col)
            for k in np.unique(mine_at[mine_at >= 0]):
                others.update(str(u) for u in holders[col][k] if u is not None and not pd.isna(u))
            sessions += [str(x) for x in own_session[used]]
        others.discard(user)
        value[j] = float(len(others))
        evidence[j] = list(dict.fromkeys(sessions))[:20]
        detail[j] = f"shares {'/'.join(sorted(kinds))} with {len(others)} other accounts"
    users["value"], users["evidence"], users["detail"] = value, evidence, detail
    users["fired"] = value >= thresholds.linked_users
    return RuleResult("linked_accounts", float(thresholds.linked_users), users, None)


SMALL_ADD_ROWS = 5_000  # IdentityIndex.add takes up to this many rows one by one, more with pandas' grouping


class IdentityIndex:
    """Who used each device id and IP address, and since when: ``linked_accounts`` for a few users without the table.

    ``shopsight watch`` keeps one in memory, fed every event as it lands, and judges the linked-accounts
    rule of a buyer as of the buyer's order from it. It finds the specific identifiers and their holders
    as :func:`_linked_accounts_for` does over the events up to that instant (per identifier it keeps each
    user's first use, so an account that used it later does not count), then hands them to
    :func:`linked_accounts_shared`: one implementation of the verdict (the tests hold the two together).
    """

    def __init__(self) -> None:
        self.users_of: dict[str, dict[Any, dict[Any, int]]] = {c: {} for c in LINK_COLUMNS}  # col -> value -> user -> first ns
        self.first_seen: dict[Any, int] = {}  # user -> first event (ns)
        self._sorted_first: np.ndarray | None = None
        self._sorted_uses: dict[tuple[str, Any], np.ndarray] = {}  # (col, value) -> its users' first uses, sorted (built on demand)

    def add(self, events: pd.DataFrame) -> None:
        """Take in ``events`` (any order, any users; rows seen before change nothing)."""
        if events.empty:
            return
        ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
        users = events["user_id"].to_numpy(dtype=object, na_value=None)
        if len(events) <= SMALL_ADD_ROWS:
            self._add_rows(events, ts.tolist(), users.tolist())
            return
        ok = np.array([u is not None for u in users], dtype=bool)
        firsts = pd.Series(ts[ok]).groupby(users[ok]).min()
        for u, t in zip(firsts.index, firsts.to_numpy()):
            old = self.first_seen.get(u)
            if old is None or t < old:
                self.first_seen[u] = int(t)
                self._sorted_first = None
        for col in LINK_COLUMNS:
            if col not in events.columns:
                continue
            values = events[col].to_numpy(dtype=object, na_value=None)
            keep = ok & np.array([v is not None for v in values], dtype=bool)
            if not keep.any():
                continue
            pairs = pd.DataFrame({"v": values[keep], "u": users[keep], "t": ts[keep]}).groupby(["v", "u"], sort=False)["t"].min()
            table = self.users_of[col]
            for (v, u), t in zip(pairs.index, pairs.to_numpy()):
                seen = table.setdefault(v, {})
                old = seen.get(u)
                if old is None or t < old:
                    seen[u] = int(t)
                    self._sorted_uses.pop((col, v), None)

    def _add_rows(self, events: pd.DataFrame, ts: list[int], users: list[Any]) -> None:
        """:meth:`add` row by row: a poll's hundred lines, where each grouping in pandas costs a millisecond."""
        for u, t in zip(users, ts):
            if u is None:
                continue
            old = self.first_seen.get(u)
            if old is None or t < old:
                self.first_seen[u] = t
                self._sorted_first = None
        for col in LINK_COLUMNS:
            if col not in events.columns:
                continue
            table = self.users_of[col]
            for v, u, t in zip(events[col].to_numpy(dtype=object, na_value=None).tolist(), users, ts):
                if v is None or u is None:
                    continue
                seen = table.setdefault(v, {})
                old = seen.get(u)
                if old is None or t < old:
                    seen[u] = t
                    self._sorted_uses.pop((col, v), None)

    def population(self, asof_ns: int) -> int:
        """How many users had an event at or before ``asof_ns``."""
        if self._sorted_first is None:
            self._sorted_first = np.sort(np.fromiter(self.first_seen.values(), dtype="int64", count=len(self.first_seen)))
        return int(np.searchsorted(self._sorted_first, asof_ns, side="right"))

    def _holders_by(self, col: str, value: Any, seen: dict[Any, int], asof_ns: int) -> int:
        """How many users had used ``value`` of ``col`` at or before ``asof_ns``."""
        uses = self._sorted_uses.get((col, value))
        if uses is None:
            uses = self._sorted_uses[(col, value)] = np.sort(np.fromiter(seen.values(), dtype="int64", count=len(seen)))
        return int(np.searchsorted(uses, asof_ns, side="right"))

    def shared(self, mine: pd.DataFrame, thresholds: RuleThresholds, asof: pd.Timestamp) -> dict[tuple[str, object], list]:
        """The specific identifiers of ``mine``'s users and who held each by ``asof`` (:func:`linked_accounts_shared`'s input)."""
        return {k: v for k, v in self.identifiers(mine, thresholds, asof).items() if v is not None}

    def identifiers(self, mine: pd.DataFrame, thresholds: RuleThresholds, asof: pd.Timestamp) -> dict[tuple[str, object], list | None]:
        """Every identifier of ``mine``'s users: who held it by ``asof`` where it is specific, None where the rule ignores
        it (common, or held by one user alone)."""
        return self._identifiers({col: list(mine[col].dropna().unique()) for col in LINK_COLUMNS if col in mine.columns}, thresholds, asof)

    def _identifiers(self, values_of: dict[str, list], thresholds: RuleThresholds, asof: pd.Timestamp) -> dict[tuple[str, object], list | None]:
        """:meth:`identifiers` of the values each identity column holds (``values_of``: column -> its distinct values)."""
        asof_ns = int(pd.Timestamp(asof).value)
        n_all: int | None = None
        out: dict[tuple[str, object], list | None] = {}
        for col, values in values_of.items():
            for value in values:
                seen = self.users_of[col].get(value) or {}
                if len(seen) > thresholds.linked_min_common:
                    # Perhaps common (a carrier NAT's IP held by thousands): count the holders by then first, and list
                    # them only if the rule can use them.
                    n = self._holders_by(col, value, seen, asof_ns)
                    if n > thresholds.linked_min_common:
                        if n_all is None:
                            n_all = self.population(asof_ns)
                        if n > common_cap(thresholds, n_all):
                            out[(col, value)] = None  # common: the rule ignores it
                            continue
                holders = [u for u, t in seen.items() if t <= asof_ns]
                n = len(holders)
                out[(col, value)] = holders if n > 1 else None
                if n > thresholds.linked_min_common:
                    if n_all is None:
                        n_all = self.population(asof_ns)
                    if n > common_cap(thresholds, n_all):
                        out[(col, value)] = None  # common: the rule ignores it
        return out

    def linked_accounts(self, mine: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds(),
                        asof: pd.Timestamp | dict[Any, pd.Timestamp] | None = None) -> RuleResult:
        """``linked_accounts`` for the users of ``mine`` (their rows up to ``asof``) over every event up to ``asof``.

        ``asof``: one instant, or one per user (several orders in one pass, each as of its own time);
        None: every event added. Every event up to ``asof`` must have been added.
        """
        if not isinstance(asof, dict):
            at = pd.Timestamp(asof) if asof is not None else pd.Timestamp.max
            return linked_accounts_shared(mine, self.shared(mine, thresholds, at), thresholds)
        # Each user's identifiers and their holders as of that user's own instant; users whose maps agree on every
        # identifier they share are judged in one call (the verdict reads only each user's own identifiers), so a
        # pass of orders costs one call, not one per buyer. Two buyers of one pass holding one identifier with
        # different holders by their instants (a fraud ring ordering minutes apart) go to different calls.
        # (An identifier one user's map leaves out, as common or held by them alone, is None in the round's map.)
        users = mine["user_id"].astype(str)
        cells = {col: mine[col].to_numpy(dtype=object, na_value=None) for col in LINK_COLUMNS if col in mine.columns}
        rounds: list[tuple[list[np.ndarray], dict[tuple[str, object], list | None]]] = []
        for u, rows in sorted(users.groupby(users, sort=False).indices.items()):
            # the user's distinct identifiers in row order, as ``mine.iloc[rows][col].dropna().unique()`` (without the frame)
            values_of = {col: list(dict.fromkeys(v for v in cells[col][rows].tolist() if v is not None)) for col in cells}
            mine_map = self._identifiers(values_of, thresholds, asof[u])
            home = next((r for r in rounds if all(r[1].get(k, v) == v for k, v in mine_map.items())), None)
            if home is None:
                home = ([], {})
                rounds.append(home)
            home[0].append(rows)
            home[1].update(mine_map)
        parts = [linked_accounts_shared(mine.iloc[np.sort(np.concatenate(rows))], {k: v for k, v in seen.items() if v is not None}, thresholds).users
                 for rows, seen in rounds]
        out = pd.concat(parts).sort_index() if parts else _empty_users(_all_users(mine))
        return RuleResult("linked_accounts", float(thresholds.linked_users), out, None)


def evaluate_rules_of_rows(mine: pd.DataFrame, thresholds: RuleThresholds, *, orders: pd.DataFrame | None, linked: RuleResult) -> dict[str, RuleResult]:
    """Every rule for the users of ``mine`` (all their rows), given their ``linked_accounts`` verdict (an :class:`IdentityIndex`'s)."""
    out = _run_rules(mine, thresholds, [n for n in RULE_NAMES if n != "linked_accounts"], orders)
    out["linked_accounts"] = linked
    return {name: out[name] for name in RULE_NAMES}


def rule_features(results: dict[str, RuleResult]) -> pd.DataFrame:
    """Wide per-user table for models: ``rule_<name>`` (value) and ``rule_<name>_fired`` (0/1)."""
    items = list(results.values())
    index = items[0].users.index if items else pd.Index([])
    if all(res.users.index.equals(index) for res in items):
        # the usual case (every rule judged the same users): arrays, no index alignment, which
        # costs more than the rest for one user's explanation
        cols = {}
        for name, res in results.items():
            cols[f"rule_{name}"] = res.users["value"].to_numpy(dtype="float64")
            cols[f"rule_{name}_fired"] = res.users["fired"].to_numpy(dtype="float64")
        return pd.DataFrame(cols, index=pd.Index(index, name="user_id"))
    series = {}
    for name, res in results.items():
        series[f"rule_{name}"] = res.users["value"].astype("float64")
        series[f"rule_{name}_fired"] = res.users["fired"].astype("float64")
    out = pd.DataFrame(series)  # aligned on the union of the rules' users
    out.index.name = "user_id"
    return out


def _as_dict(name: str, threshold: float, row: pd.Series) -> dict:
    return {
        "name": name,
        "fired": bool(row["fired"]),
        "value": round(float(row["value"]), 4),
        "threshold": threshold,
        "detail": str(row["detail"]),
        "evidence": [str(e) for e in row["evidence"]],
    }


def rules_for_user(results: dict[str, RuleResult], user_id: str) -> list[dict]:
    """Every rule's verdict for one user, fired ones first (the ``rules`` part of explain)."""
    out = []
    for name, res in results.items():
        if user_id in res.users.index:
            out.append(_as_dict(name, res.threshold, res.users.loc[user_id]))
    return sorted(out, key=lambda r: not r["fired"])


def rules_for_order(results: dict[str, RuleResult], order_id: str) -> list[dict]:
    """Every per-order rule's verdict for one order, plus the per-user rules of its buyer."""
    out = []
    user = None
    for name, res in results.items():
        if res.orders is not None and order_id in res.orders.index:
            row = res.orders.loc[order_id]
            user = row["user_id"]
            out.append(_as_dict(name, res.threshold, row))
    if user is not None:
        for name, res in results.items():
            if res.orders is None and user in res.users.index:
                out.append(_as_dict(name, res.threshold, res.users.loc[user]))
    return sorted(out, key=lambda r: not r["fired"])


# --- the rules in words (the glossary entries of RULE_NAMES and of rule_features' columns) ---


def _window_words(window: pd.Timedelta) -> str:
    """A rule window in words: "an hour", "a day", else "6 hours" (the rule's detail states the hours)."""
    hours = window.total_seconds() / 3600
    return {1.0: "an hour", 24.0: "a day"}.get(hours, f"{hours:g} hours")


def _evidence_orders(rule: dict, ctx: Any) -> pd.DataFrame:
    """The orders a rule cites, oldest first (empty without an order table)."""
    orders = getattr(ctx, "orders", None)
    if orders is None or orders.empty:
        return _no_orders()
    ids = [str(e) for e in rule.get("evidence") or []]
    return orders[orders.index.astype(str).isin(ids)].sort_values("ts", kind="stable")


def rule_glossary(thresholds: RuleThresholds = RuleThresholds()) -> Any:
    """The rules of this module in words, for ``thresholds``: what each looks for, when it fires, how a fired one reads.

    Also the terms of ``rule_features``' columns (``rule_<name>`` and ``rule_<name>_fired``),
    which the risk model uses as features. Built per thresholds so the words match the windows
    and amounts the rules judged with.
    """
    from shopsight.behavior.models.glossary import (
        Glossary,
        RuleSaid,
        RuleTerm,
        Term,
        counted,
        flag,
        is_number,
        show_count,
        show_money,
        show_percent,
        show_ratio,
        where,
        worded,
    )
    from shopsight.behavior.privacy import mask_pii

    t = thresholds
    burst_w, velo_w = _window_words(t.card_testing_window), _window_words(t.velocity_window)

    def burst(rule: dict, ctx: Any, what: str) -> RuleSaid:
        n = int(round(float(rule["value"])))
        sel = _evidence_orders(rule, ctx)
        if sel.empty:
            return RuleSaid(f"{n} {what} within {burst_w if what != 'orders' else velo_w}")
        window = burst_w if what != "orders" else velo_w
        text = f"{n} {what} within {window}, {show_money(sel['amount'].sum())} in total"
        cards = sel["payment"].dropna().nunique()
        if cards == len(sel) and cards > 1:
            text += ", each paid with a different card"
        elif cards > 1:
            text += ", paid with several different cards"
        at, sid, day = where(sel["ts"].iloc[0], sel["session_id"].iloc[0])
        return RuleSaid(text, at, sid, day)

    def card_testing(rule: dict, ctx: Any) -> RuleSaid:
        return burst(rule, ctx, f"orders of at most {t.card_testing_amount:g} each")

    def velocity_said(rule: dict, ctx: Any) -> RuleSaid:
        return burst(rule, ctx, "orders")

    def new_device(rule: dict, ctx: Any) -> RuleSaid:
        sel = _evidence_orders(rule, ctx)
        if sel.empty:
            return RuleSaid(f"a high-value order from a device and country they had never used, {show_ratio(rule['value'])} times their earlier average order")
        o = sel.loc[sel["amount"].idxmax()] if len(sel) > 1 else sel.iloc[0]
        lead = f"{len(sel)} high-value orders from devices and countries they had never used, the largest" if len(sel) > 1 else "an order"
        # device and country are free text in some sources ("Alice's iPhone +1 415 …"): masked and bounded
        ident = ", ".join(mask_pii(str(v))[:40] for v in (o.get("device"), o.get("country")) if v is not None and not pd.isna(v))
        text = f"{lead} of {show_money(o['amount'])} from a new device and country" + (f" ({ident})" if ident else "")
        earlier = ctx.orders[(ctx.orders["ts"] < o["ts"])]["amount"] if ctx.orders is not None else pd.Series(dtype="float64")
        if len(earlier):
            text += f", {show_ratio(float(o['amount']) / max(float(earlier.mean()), 1.0))} times their earlier average order"
        else:
            text += ", their first order"
        at, sid, day = where(o["ts"], o["session_id"])
        return RuleSaid(text, at, sid, day)

    def refunds(rule: dict, ctx: Any) -> RuleSaid:
        ev = ctx.events
        is_ref = (ev["event"] == "refund").to_numpy(dtype=bool, na_value=False)
        n_ref, n_buy = int(is_ref.sum()), int((ev["event"] == "purchase").to_numpy(dtype=bool, na_value=False).sum())
        text = f"refunded {n_ref} of {n_buy} purchased items ({show_percent(rule['value'])})"
        if not is_ref.any():
            return RuleSaid(text)
        last = ev[is_ref].sort_values("ts", kind="stable").iloc[-1]
        at, sid, day = where(last["ts"], last["session_id"], lead="the latest on")
        return RuleSaid(text, at, sid, day)

    def linked(rule: dict, ctx: Any) -> RuleSaid:
        detail = str(rule.get("detail") or "")
        kinds = [w for k, w in (("ip", "IP address"), ("device", "device id")) if k in detail.split(" with ")[0]]
        shared = " and ".join(kinds) or "a device or IP address"
        n = int(round(float(rule["value"])))
        text = f"shares its {shared} with {n} other {'account' if n == 1 else 'accounts'}"
        sessions = [str(s) for s in rule.get("evidence") or []]
        ev = ctx.events
        rows = ev[ev["session_id"].astype(str).isin(sessions[:1])] if sessions else ev.iloc[:0]
        if rows.empty:
            return RuleSaid(text)
        at, sid, day = where(rows["ts"].min(), sessions[0], lead="first on")
        return RuleSaid(text, at, sid, day)

    def bot(rule: dict, ctx: Any) -> RuleSaid:
        sessions = [str(s) for s in rule.get("evidence") or []]
        detail = str(rule.get("detail") or "")
        sid = next((s for s in sessions if f"session {s}:" in detail), sessions[0] if sessions else None)
        ev = ctx.events
        rows = ev[ev["session_id"].astype(str) == sid] if sid else ev.iloc[:0]
        count = f"a session of {show_count(len(rows))} events" if len(rows) else "a session"
        text = f"{count} at {show_ratio(rule['value'])} events a minute (people browse at a few a minute)"
        if rows.empty:
            return RuleSaid(text)
        at, sid, day = where(rows["ts"].min(), sid)
        return RuleSaid(text, at, sid, day)

    rules = {
        "velocity": RuleTerm("many orders by one user in a short time", f"at least {t.velocity_orders} orders within {velo_w}",
                             "rule_velocity", "rule_velocity", velocity_said),
        "new_device_high_value": RuleTerm(
            "a high-value order from a device and a country the user had never used (the account-takeover signature)",
            f"an order of at least {t.high_value_amount:g}, or {t.high_value_ratio:g} times the earlier mean order, from a new device and country",
            "rule_new_device_high_value", "rule_new_device_high_value", new_device),
        "card_testing_burst": RuleTerm("many tiny orders in a short burst: stolen cards tried with small charges",
                                       f"at least {t.card_testing_orders} orders of at most {t.card_testing_amount:g} within {burst_w}",
                                       "rule_card_testing_burst", "rule_card_testing_burst", card_testing),
        "refund_rate": RuleTerm("most of what they buy is refunded", f"refunds per purchased item of at least {show_percent(t.refund_rate)}, after {t.refund_min_purchases} purchased items",
                                "rule_refund_rate", "rule_refund_rate", refunds),
        "linked_accounts": RuleTerm("other accounts share this account's device id or IP address (rings of accounts)",
                                    f"at least {t.linked_users} other accounts on a specific (not carrier-wide) device or IP",
                                    "rule_linked_accounts", "rule_linked_accounts", linked),
        "bot_velocity": RuleTerm("a session faster than a person browses (a script)", f"a session of at least {t.bot_min_events} events at {t.bot_events_per_minute:g} or more a minute",
                                 "rule_bot_velocity", "rule_bot_velocity", bot),
    }

    def fired_flag(name: str) -> Term:
        return flag(f"whether the {name.replace('_', ' ')} rule fired", f"the {name.replace('_', ' ')} rule fired", f"the {name.replace('_', ' ')} rule did not fire",
                    reading=f"1 = fired: {rules[name].fires_when}")

    def ratio_say(v: float | None, row: Any) -> str:
        if not is_number(v) or float(v) == 0:
            return "no order from a new device and country"
        return f"an order from a new device and country at {show_ratio(v)} times their earlier average order"

    terms = {
        "rule_velocity": counted("order", "orders", f"within {velo_w} at their busiest", reading="the most orders the user placed within the velocity window"),
        "rule_card_testing_burst": counted("tiny order", "tiny orders", f"within {burst_w} at most", none="no burst of tiny orders",
                                           reading=f"the most orders of at most {t.card_testing_amount:g} within {burst_w}"),
        "rule_new_device_high_value": Term("largest order from a new device and country, as a multiple of the earlier mean order",
                                           "0 = every order came from a device or country seen before", "ratio", ratio_say),
        "rule_refund_rate": worded("refunds per purchased item", "fraction", "{v} of purchased items refunded", reading="refund events / purchase lines"),
        "rule_linked_accounts": counted("other account sharing its device or IP address", "other accounts sharing its device or IP address", "",
                                        none="no other account shares its device or IP address", reading="accounts on the same specific device id or IP"),
        "rule_bot_velocity": worded("events per minute in their fastest session", "rate", "{v} events a minute in their fastest session",
                                    reading="a person browses at a few a minute; scripts at dozens"),
        **{f"rule_{n}_fired": fired_flag(n) for n in RULE_NAMES},
    }
    return Glossary(terms=terms, rules=rules, population="accounts")
