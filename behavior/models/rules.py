"""Named fraud/abuse rule signals as pure pandas functions, each citing the ids behind it.

A rule answers one question a risk officer would ask ("did this user place many tiny
orders in a burst?") with a value, a threshold, a fired flag and the evidence (order or
session ids). The risk model uses the values as features and its explanations cite the
rules that fired, so every rule here is deterministic and cheap.

All rules except :func:`linked_accounts` look at one user's rows at a time, so they run per
user group on Spark too; ``linked_accounts`` needs every user who might share a device or IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

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
    one order per session with purchases (the order id is then the session id).
    """
    buys = events[events["event"] == "purchase"]
    cols = ["order_id", "user_id", "session_id", "ts", "amount", "n_lines", "device", "ip", "country", "payment"]
    if buys.empty:
        dtypes = {"ts": "datetime64[ns, UTC]", "amount": "float64", "n_lines": "int64"}
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "string")) for c in cols}).set_index("order_id")
    key = buys["order_id"] if "order_id" in buys.columns else pd.Series(pd.NA, index=buys.index, dtype="string")
    key = key.fillna(buys["session_id"]).astype("string")
    df = buys.assign(_order=key, _amount=buys["price"].fillna(0.0) * buys["quantity"])
    g = df.groupby("_order", sort=False)
    out = g.agg(
        user_id=("user_id", "first"),
        session_id=("session_id", "first"),
        ts=("ts", "min"),
        amount=("_amount", "sum"),
        n_lines=("event", "size"),
    )
    for opt in ("device", "ip", "country", "payment"):
        out[opt] = g[opt].first() if opt in df.columns else pd.Series(pd.NA, index=out.index, dtype="string")
    out.index.name = "order_id"
    return out.sort_values(["user_id", "ts"], kind="stable")


def _empty_users(users: pd.Index) -> pd.DataFrame:
    out = pd.DataFrame(index=users)
    out.index.name = "user_id"
    out["value"] = 0.0
    out["fired"] = False
    out["evidence"] = [[] for _ in range(len(out))]
    out["detail"] = ""
    return out


def _all_users(events: pd.DataFrame) -> pd.Index:
    return pd.Index(sorted(events["user_id"].dropna().unique()), name="user_id")


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
) -> RuleResult:
    """Max number of ``orders`` by one user inside any ``window``; evidence = the orders of that burst."""
    users = _empty_users(_all_users(events))
    order_out = pd.DataFrame(columns=ORDER_COLUMNS, index=pd.Index([], name="order_id"))
    if not orders.empty:
        orders = orders.sort_values(["user_id", "ts"], kind="stable")
        counts = _window_counts(orders, window)
        order_out = pd.DataFrame(
            {"user_id": orders["user_id"], "value": counts.astype("float64"), "fired": counts >= threshold}
        )
        # The orders of a window ending at row i are the count[i] rows up to i (rows are sorted
        # by user then time), so a burst's evidence is a slice, not a search.
        rows = pd.DataFrame({"u": orders["user_id"].to_numpy(), "c": counts.to_numpy(), "p": np.arange(len(orders))})
        peak = rows.sort_values(["u", "c", "p"], ascending=[True, False, True], kind="stable").drop_duplicates("u")
        peak_pos = pd.Series(peak["p"].to_numpy(), index=pd.Index(peak["u"].to_numpy(), name="user_id"))
        ids = orders.index.astype(str).to_numpy()
        amount_cum = np.r_[0.0, np.cumsum(orders["amount"].to_numpy(dtype="float64"))]
        ts = orders["ts"]
        hours = window.total_seconds() / 3600
        evidence, detail, values = [], [], []
        for p in peak_pos.to_numpy():
            n = int(counts.iat[p])
            evidence.append(list(ids[p - n + 1 : p + 1]))
            values.append(float(n))
            detail.append(
                f"{n} {what} within {hours:g} h ending {ts.iat[p]:%Y-%m-%d %H:%M}, "
                f"total {amount_cum[p + 1] - amount_cum[p - n + 1]:.2f}"
            )
        users.loc[peak_pos.index, "value"] = values
        users.loc[peak_pos.index, "fired"] = np.asarray(values) >= threshold
        users.loc[peak_pos.index, "evidence"] = pd.Series(evidence, index=peak_pos.index, dtype=object)
        users.loc[peak_pos.index, "detail"] = detail
        start = np.arange(len(orders)) - counts.to_numpy() + 1
        order_out["evidence"] = [
            list(ids[a : b + 1]) if f else [ids[b]] for a, b, f in zip(start, range(len(orders)), order_out["fired"])
        ]
        order_out["detail"] = [f"{int(v)} {what} within {hours:g} h up to this one" for v in order_out["value"]]
    return RuleResult(name=name, threshold=float(threshold), users=users, orders=order_out)


# --- the rules ------------------------------------------------------------------------------


def velocity(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> RuleResult:
    """Order velocity: the most orders one user placed within ``velocity_window``.

    Value per user: that count; per order: the user's orders in the window ending at it.
    Evidence: the order ids of the busiest window.
    """
    return _burst_rule(
        "velocity",
        events,
        order_table(events),
        thresholds.velocity_window,
        thresholds.velocity_orders,
        "orders",
    )


def card_testing_burst(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> RuleResult:
    """Card testing: many tiny orders (≤ ``card_testing_amount``) in a short burst.

    Fraudsters check stolen cards with small charges before a large one. Value: the most
    tiny orders within ``card_testing_window``; evidence: those order ids.
    """
    orders = order_table(events)
    small = orders[orders["amount"] <= thresholds.card_testing_amount]
    return _burst_rule(
        "card_testing_burst",
        events,
        small,
        thresholds.card_testing_window,
        thresholds.card_testing_orders,
        f"orders of at most {thresholds.card_testing_amount:g}",
    )


def new_device_high_value(
    events: pd.DataFrame,
    thresholds: RuleThresholds = RuleThresholds(),
    identity_columns: tuple[str, ...] = ("device", "country"),
) -> RuleResult:
    """A high-value order from a device and a country the user had never used before.

    The classic account-takeover signature. An order is "new identity" when every one of
    ``identity_columns`` present (device and country) of its session is a value that no
    earlier session of the same user had: a shopper on a second device at home or abroad on
    their own phone is not new. A user's first session is not judged (everything is new then). It is high value when
    its amount is ≥ ``high_value_amount`` or ≥ ``high_value_ratio`` × the user's earlier
    mean order. Value per order: amount / max(earlier mean, 1) when new, else 0; per
    user: the largest such value. Evidence: the order ids that fired.
    """
    users = _empty_users(_all_users(events))
    orders = order_table(events)
    cols = [c for c in identity_columns if c in events.columns]
    order_out = pd.DataFrame(columns=ORDER_COLUMNS, index=pd.Index([], name="order_id"))
    if orders.empty or not cols:
        return RuleResult("new_device_high_value", thresholds.high_value_ratio, users, order_out)

    # First time each (user, column, value) was seen, at session granularity: a device that
    # first appears in the order's own session is new for that order.
    sess_start = events.groupby("session_id", sort=False)["ts"].min()
    is_new = np.ones(len(orders), dtype=bool)
    new_what: list[list[str]] = [[] for _ in range(len(orders))]
    first_session = events.groupby("user_id")["ts"].min()
    order_sess_start = sess_start.reindex(orders["session_id"]).to_numpy()
    for col in cols:
        seen = events.dropna(subset=[col]).groupby(["user_id", col], sort=False)["ts"].min().rename("_first").reset_index()
        first_seen = orders[["user_id", col]].merge(seen, on=["user_id", col], how="left")["_first"]
        new_here = (first_seen.notna() & (first_seen.to_numpy() >= order_sess_start)).to_numpy()
        is_new &= new_here
        for i in np.flatnonzero(new_here):
            new_what[i].append(f"{col} {orders[col].iat[i]}")
    not_first = (order_sess_start > first_session.reindex(orders["user_id"]).to_numpy())
    is_new &= not_first

    # The user's mean order before this one (expanding, excluding the current order).
    by_user = orders.groupby("user_id", sort=False)["amount"]
    n_before = by_user.cumcount().astype("float64")
    prior_mean = ((by_user.cumsum() - orders["amount"]) / n_before.where(n_before > 0)).astype("float64")
    ratio = orders["amount"] / prior_mean.fillna(0.0).clip(lower=1.0)
    high = (orders["amount"] >= thresholds.high_value_amount) | (
        prior_mean.notna() & (ratio >= thresholds.high_value_ratio)
    )
    fired = is_new & high.to_numpy()
    value = np.where(is_new, ratio.to_numpy(), 0.0)
    order_out = pd.DataFrame({"user_id": orders["user_id"], "value": value, "fired": fired})
    order_out["evidence"] = [[str(o)] if f else [] for o, f in zip(order_out.index, fired)]
    order_out["detail"] = [
        (
            f"order of {a:.2f} from new {', '.join(w)}"
            + (f", {r:.1f}x the earlier mean {m:.2f}" if not np.isnan(m) else ", no earlier orders")
        )
        if n
        else f"order of {a:.2f} from known device/country"
        for a, w, n, r, m in zip(orders["amount"], new_what, is_new, ratio, prior_mean)
    ]
    per_user = order_out.groupby("user_id")
    users.loc[per_user["value"].max().index, "value"] = per_user["value"].max()
    users.loc[per_user["fired"].any().index, "fired"] = per_user["fired"].any()
    for user, grp in order_out[order_out["fired"]].groupby("user_id"):
        users.at[user, "evidence"] = [str(o) for o in grp.index]
        users.at[user, "detail"] = f"{len(grp)} high-value orders from a new device/country: " + "; ".join(
            grp["detail"].head(3)
        )
    return RuleResult("new_device_high_value", thresholds.high_value_ratio, users, order_out)


def refund_rate(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> RuleResult:
    """Refunds per purchased line (the same definition as ``user_features``' refund_rate).

    Fires at ≥ ``refund_rate`` once the user has ≥ ``refund_min_purchases`` purchase lines.
    Evidence: the refunded order ids (session ids where refunds carry no order id).
    """
    users = _empty_users(_all_users(events))
    ev = events["event"]
    purchases = events[ev == "purchase"].groupby("user_id").size()
    refunds_df = events[ev == "refund"]
    refunds = refunds_df.groupby("user_id").size()
    n_buy = purchases.reindex(users.index).fillna(0).astype("int64")
    n_ref = refunds.reindex(users.index).fillna(0).astype("int64")
    rate = n_ref / n_buy.clip(lower=1)
    users["value"] = rate.astype("float64")
    users["fired"] = (rate >= thresholds.refund_rate) & (n_buy >= thresholds.refund_min_purchases)
    if not refunds_df.empty:
        ref_id = refunds_df["order_id"] if "order_id" in refunds_df.columns else refunds_df["session_id"]
        ref_id = ref_id.fillna(refunds_df["session_id"]).astype("string")
        ids = ref_id.groupby(refunds_df["user_id"]).agg(lambda s: list(dict.fromkeys(map(str, s))))
        for user, lst in ids.items():
            users.at[user, "evidence"] = lst
    users["detail"] = [f"{r} refunds for {b} purchased lines" for r, b in zip(n_ref, n_buy)]
    return RuleResult("refund_rate", thresholds.refund_rate, users, None)


def linked_accounts(
    events: pd.DataFrame,
    thresholds: RuleThresholds = RuleThresholds(),
    identity_columns: tuple[str, ...] = ("ip", "device"),
    population: int | None = None,
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
    users = _empty_users(_all_users(events))
    n_users = population or max(len(users), 1)
    common_cap = max(int(thresholds.linked_max_share * n_users), thresholds.linked_min_common)
    pairs: list[pd.DataFrame] = []
    for col in identity_columns:
        if col not in events.columns:
            continue
        sub = events.loc[events[col].notna(), ["user_id", col, "session_id"]].drop_duplicates(["user_id", col])
        n_per_id = sub.groupby(col)["user_id"].nunique()
        specific = n_per_id[(n_per_id > 1) & (n_per_id <= common_cap)].index
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


def bot_velocity(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> RuleResult:
    """Bot-like speed: the fastest session's events per minute (sessions of ≥ ``bot_min_events``).

    People browse at a few events a minute; scripts at dozens. Evidence: the session ids at
    or above the threshold (or the fastest session when none is).
    """
    users = _empty_users(_all_users(events))
    g = events.groupby("session_id", sort=False)
    s = g.agg(user_id=("user_id", "first"), n=("event", "size"), start=("ts", "min"), end=("ts", "max"))
    # A session of n events spans n-1 gaps; floor the span at one second per gap so that
    # identical timestamps do not divide by zero.
    minutes = ((s["end"] - s["start"]).dt.total_seconds() / 60.0).clip(lower=(s["n"] - 1).clip(lower=1) / 60.0)
    s["rate"] = np.where(s["n"] >= thresholds.bot_min_events, s["n"] / minutes, 0.0)
    best = s.sort_values("rate", ascending=False, kind="stable").groupby("user_id", sort=False).head(1)
    users.loc[best["user_id"], "value"] = best["rate"].to_numpy()
    users["fired"] = users["value"] >= thresholds.bot_events_per_minute
    fast = s[s["rate"] >= thresholds.bot_events_per_minute]
    for user, grp in fast.groupby("user_id"):
        users.at[user, "evidence"] = [str(i) for i in grp.index]
    for user, sid, rate, n in zip(best["user_id"], best.index, best["rate"], best["n"]):
        if not users.at[user, "evidence"] and rate > 0:
            users.at[user, "evidence"] = [str(sid)]
        users.at[user, "detail"] = f"fastest session {sid}: {int(n)} events at {rate:.1f}/min"
    return RuleResult("bot_velocity", thresholds.bot_events_per_minute, users, None)


RULES: dict[str, Callable[[pd.DataFrame, RuleThresholds], RuleResult]] = {
    "velocity": velocity,
    "new_device_high_value": new_device_high_value,
    "card_testing_burst": card_testing_burst,
    "refund_rate": refund_rate,
    "linked_accounts": linked_accounts,
    "bot_velocity": bot_velocity,
}


def evaluate_rules(events: pd.DataFrame, thresholds: RuleThresholds = RuleThresholds()) -> dict[str, RuleResult]:
    """Run every rule in RULE_NAMES over ``events``."""
    return {name: RULES[name](events, thresholds) for name in RULE_NAMES}


def evaluate_rules_for_users(
    events: pd.DataFrame, users: Sequence[str], thresholds: RuleThresholds = RuleThresholds()
) -> dict[str, RuleResult]:
    """Every rule for a few ``users`` without judging the whole table: the fast path of explain/predict.

    Per-user rules see only these users' events; ``linked_accounts`` also sees every other
    account that shares an identifier with them, and takes its "common identifier" share of
    all users in ``events``, so the verdicts equal those of ``evaluate_rules(events)``.
    """
    users = [str(u) for u in users]
    mine = events[events["user_id"].isin(users)]
    out = {name: RULES[name](mine, thresholds) for name in RULE_NAMES if name != "linked_accounts"}
    n_all = int(events["user_id"].nunique())
    cap = max(int(thresholds.linked_max_share * n_all), thresholds.linked_min_common)
    near = events["user_id"].isin(users).to_numpy(dtype=bool).copy()
    for col in ("ip", "device"):
        if col in events.columns:
            hit = events[col].isin(mine[col].dropna().unique()).to_numpy(dtype=bool)
            per_id = events.loc[hit, ["user_id", col]].drop_duplicates().groupby(col)["user_id"].size()
            # Common identifiers ("mobile") would pull in everyone and are ignored by the rule anyway.
            near |= events[col].isin(per_id[per_id <= cap].index).to_numpy(dtype=bool)
    linked = linked_accounts(events[near], thresholds, population=n_all)
    res = RuleResult(linked.name, linked.threshold, linked.users.reindex(pd.Index(users, name="user_id")), None)
    out["linked_accounts"] = res
    return {name: out[name] for name in RULE_NAMES}


def rule_features(results: dict[str, RuleResult]) -> pd.DataFrame:
    """Wide per-user table for models: ``rule_<name>`` (value) and ``rule_<name>_fired`` (0/1)."""
    cols = {}
    for name, res in results.items():
        cols[f"rule_{name}"] = res.users["value"].astype("float64")
        cols[f"rule_{name}_fired"] = res.users["fired"].astype("float64")
    out = pd.DataFrame(cols)
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
