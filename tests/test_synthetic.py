"""The synthetic shop: determinism, ground-truth base rates, and the traces each label leaves."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.events import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from shopsight.behavior.features import session_table
from shopsight.behavior.ingest import ingest_file
from shopsight.behavior.privacy import mask_pii
from shopsight.behavior.synthetic import CATEGORIES, FRAUD_TYPES, SyntheticShop, generate_shop

LABEL_COLUMNS = {"segment", "signup_ts", "dropout_ts", "is_fraud", "fraud_type", "linked_group", "intent", "purchased",
                 "purchase_prob", "amount"}


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return generate_shop(users=2000, days=120, seed=3)


@pytest.fixture(scope="module")
def sessions(shop: SyntheticShop) -> pd.DataFrame:
    return session_table(shop.events).merge(shop.labels["sessions"][["session_id", "intent"]], on="session_id")


def _fraud_users(shop: SyntheticShop, kind: str | None) -> set[str]:
    users = shop.labels["users"]
    mask = users["fraud_type"].isna() if kind is None else users["fraud_type"] == kind
    return set(users.loc[mask, "user_id"])


def _hash(df: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(df, index=False).to_numpy()


# --- determinism -------------------------------------------------------------------------
def test_same_seed_gives_identical_events_labels_and_catalogue():
    a = generate_shop(users=300, days=60, seed=11)
    b = generate_shop(users=300, days=60, seed=11)
    assert np.array_equal(_hash(a.events), _hash(b.events))
    for name in ("users", "sessions", "orders"):
        assert np.array_equal(_hash(a.labels[name].astype(str)), _hash(b.labels[name].astype(str))), name
    assert np.array_equal(_hash(a.catalogue), _hash(b.catalogue))


def test_different_seed_gives_different_events():
    a = generate_shop(users=300, days=60, seed=11)
    b = generate_shop(users=300, days=60, seed=12)
    assert len(a.events) != len(b.events) or not np.array_equal(_hash(a.events), _hash(b.events))


# --- shape and contracts ------------------------------------------------------------------
def test_events_are_canonical_with_the_generators_ids(shop: SyntheticShop):
    e = shop.events
    assert list(e.columns) == list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS)
    assert not LABEL_COLUMNS & set(e.columns)
    assert str(e["ts"].dtype) == "datetime64[ns, UTC]"
    assert e["user_id"].str.fullmatch(r"u\d{5}").all()
    assert e["session_id"].str.fullmatch(r"u\d{5}-s\d{4}").all()
    assert (e["session_id"].str.slice(0, 6) == e["user_id"]).all()
    buys = e[e["event"] == "purchase"]
    assert buys["order_id"].str.fullmatch(r"o\d{6}").all()
    assert e.loc[e["event"] == "view", "order_id"].isna().all()
    assert e["ip"].str.fullmatch(r"\d{1,3}(\.\d{1,3}){3}").all()
    # Sorted by user then time, as to_canonical promises.
    assert e.equals(e.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True))


def test_catalogue_has_readable_names_in_twelve_categories(shop: SyntheticShop):
    c = shop.catalogue
    assert list(c.columns) == ["item_id", "name", "category", "price"]
    assert set(c["category"]) == set(CATEGORIES) and len(CATEGORIES) == 12
    assert c["item_id"].is_unique
    assert (c["name"].str.split().str.len() >= 3).all()  # "Brand Model Product"
    assert (c["price"] > 0).all()
    seen = shop.events.dropna(subset=["item_id"]).merge(c, on="item_id", suffixes=("", "_cat"))
    assert (seen["price"] == seen["price_cat"]).all() and (seen["category"] == seen["category_cat"]).all()


def test_labels_cover_every_user_session_and_order(shop: SyntheticShop):
    e, labels = shop.events, shop.labels
    assert set(labels["users"]["user_id"]) == set(e["user_id"])
    assert set(labels["sessions"]["session_id"]) == set(e["session_id"])
    assert labels["sessions"]["session_id"].is_unique
    assert set(labels["orders"]["order_id"]) == set(e.loc[e["event"] == "purchase", "order_id"])
    assert labels["orders"]["order_id"].is_unique
    bought = set(e.loc[e["event"] == "purchase", "session_id"])
    truth = labels["sessions"].set_index("session_id")["purchased"]
    assert set(truth[truth].index) == bought
    assert labels["sessions"]["intent"].between(0, 1).all()


def test_events_survive_a_csv_round_trip_through_ingest(tmp_path, workspace):
    shop = generate_shop(users=150, days=45, seed=5)
    path = tmp_path / "shop.csv"
    shop.events.to_csv(path, index=False)
    events, report = ingest_file(workspace, path)
    assert report.rows_rejected == 0 and report.duplicates == 0
    assert report.rows_kept == len(shop.events)
    # Ingest masks the personal data the generator plants in searches and reviews, and
    # counts it; everything else comes back as generated.
    expected = shop.events.copy()
    expected["text"] = expected["text"].map(lambda t: mask_pii(t) if isinstance(t, str) else t)
    planted = int((expected["text"] != shop.events["text"]).fillna(False).sum())
    assert planted > 0 and report.notes["text: personal data masked"] == planted
    # IP addresses are stored as keyed pseudonyms: one per address, so accounts sharing one still share it
    assert events["ip"].str.startswith("ip-").all()
    pairs = pd.DataFrame({"raw": shop.events["ip"].to_numpy(), "stored": events["ip"].to_numpy()}).drop_duplicates()
    assert pairs["raw"].is_unique and pairs["stored"].is_unique
    pd.testing.assert_frame_equal(events.drop(columns="ip"), expected.drop(columns="ip"), check_dtype=False)


# --- base rates ---------------------------------------------------------------------------
def test_fraud_share_is_between_half_and_three_percent_with_every_type(shop: SyntheticShop):
    users = shop.labels["users"]
    assert 0.005 <= users["is_fraud"].mean() <= 0.03
    assert set(users["fraud_type"].dropna()) == set(FRAUD_TYPES)
    assert (users["is_fraud"] == users["fraud_type"].notna()).all()
    orders = shop.labels["orders"]
    assert set(orders.loc[orders["is_fraud"], "fraud_type"]) == {"account_takeover", "card_testing", "promo_abuse",
                                                                "return_fraud"}


def test_dropout_share_is_plausible_and_nothing_happens_after_dropout(shop: SyntheticShop):
    users = shop.labels["users"]
    assert 0.15 <= users["dropout_ts"].notna().mean() <= 0.5
    last = shop.events.groupby("user_id")["ts"].max()
    dropped = users.dropna(subset=["dropout_ts"]).set_index("user_id")["dropout_ts"]
    assert (last.reindex(dropped.index) < dropped).all()
    assert (users["dropout_ts"].dropna() <= shop.events["ts"].max() + pd.Timedelta(days=1)).all()


def test_purchase_rate_is_higher_with_cart_adds_and_focused_browsing(sessions: pd.DataFrame):
    shopping = sessions[sessions["n_view"] >= 2]
    with_cart = shopping.loc[shopping["n_add_to_cart"] > 0, "purchased"].mean()
    without = shopping.loc[shopping["n_add_to_cart"] == 0, "purchased"].mean()
    assert with_cart > 3 * without
    assert shopping.loc[shopping["purchased"], "intent"].mean() > shopping.loc[~shopping["purchased"], "intent"].mean() + 0.1


def test_purchase_rate_depends_on_segment_and_device(shop: SyntheticShop, sessions: pd.DataFrame):
    seg = shop.labels["users"].set_index("user_id")["segment"]
    s = sessions[sessions["n_view"] >= 1].assign(segment=lambda d: d["user_id"].map(seg))
    by_seg = s.groupby("segment")["purchased"].mean()
    assert by_seg["loyal"] > by_seg["browser"] + 0.05
    by_dev = s.groupby("device")["purchased"].mean()
    assert by_dev["desktop"] > by_dev["mobile"]


def test_sessions_get_rarer_and_shorter_before_dropout(shop: SyntheticShop, sessions: pd.DataFrame):
    users = shop.labels["users"]
    honest = users[users["fraud_type"].isna()].set_index("user_id")
    start = pd.Timestamp("2026-01-05", tz="UTC")
    dropped = honest["dropout_ts"].dropna()
    active_from = honest["signup_ts"].clip(lower=start).reindex(dropped.index)
    long_lived = dropped[(dropped - active_from) > pd.Timedelta(days=70)]
    s = sessions[sessions["user_id"].isin(long_lived.index) & (sessions["n_view"] > 0)]
    to_drop = (s["user_id"].map(long_lived) - s["start"]).dt.days
    late = s[to_drop < 20]
    early = s[(to_drop >= 40) & (to_drop < 70)]
    # Sessions per user-day in the 20 days before dropout versus 30 days well before it.
    late_rate = len(late) / (20 * len(long_lived))
    early_rate = len(early) / (30 * len(long_lived))
    assert late_rate < 0.7 * early_rate
    assert late["n_view"].mean() < early["n_view"].mean()


# --- fraud traces -------------------------------------------------------------------------
def test_card_testers_place_many_tiny_orders_with_different_cards(shop: SyntheticShop):
    orders = shop.labels["orders"]
    testers = _fraud_users(shop, "card_testing")
    honest = _fraud_users(shop, None)
    per_user = orders.groupby("user_id").agg(n=("order_id", "size"), median_amount=("amount", "median"))
    assert per_user.loc[list(testers), "n"].median() > 5 * per_user.reindex(list(honest))["n"].fillna(0).median()
    assert (per_user.loc[list(testers), "median_amount"] < 5).all()
    buys = shop.events[(shop.events["event"] == "purchase") & shop.events["user_id"].isin(testers)]
    cards_per_user = buys.groupby("user_id")["payment"].nunique() / buys.groupby("user_id").size()
    assert (cards_per_user > 0.8).all()


def test_account_takeover_orders_come_from_a_new_country_and_are_pricey(shop: SyntheticShop):
    orders, e = shop.labels["orders"], shop.events
    ato = orders[orders["fraud_type"] == "account_takeover"]
    assert len(ato) >= 1
    honest_median = orders.loc[~orders["is_fraud"], "amount"].median()
    assert ato["amount"].median() > 3 * honest_median
    for _, order in ato.iterrows():
        session = e.loc[e["order_id"] == order["order_id"], "session_id"].iloc[0]
        rows = e[e["session_id"] == session]
        before = e[(e["user_id"] == order["user_id"]) & (e["ts"] < rows["ts"].min())]
        assert rows["event"].iloc[0] == "login"
        assert rows["country"].iloc[0] not in set(before["country"])
        assert set(rows["category"].dropna()) <= {"Audio", "Phones", "Laptops", "Gaming"}
        assert (rows["ts"].max() - rows["ts"].min()) < pd.Timedelta(minutes=5)


def test_promo_rings_share_an_ip_and_pay_with_a_promo(shop: SyntheticShop):
    users = shop.labels["users"]
    rings = users.dropna(subset=["linked_group"]).groupby("linked_group")["user_id"].apply(list)
    assert len(rings) >= 1
    e = shop.events
    for members in rings:
        assert len(members) >= 3
        mine = e[e["user_id"].isin(members)]
        assert mine["ip"].nunique() == 1
        assert (mine.loc[mine["event"] == "purchase", "payment"] == "promo").all()


def test_return_fraudsters_refund_most_purchases(shop: SyntheticShop):
    e = shop.events
    counts = e[e["event"].isin(["purchase", "refund"])].groupby(["user_id", "event"]).size().unstack(fill_value=0)
    rate = counts["refund"] / counts["purchase"].clip(lower=1)
    fraudsters = [u for u in _fraud_users(shop, "return_fraud") if u in rate.index]
    honest = [u for u in _fraud_users(shop, None) if u in rate.index]
    assert rate[fraudsters].mean() > 0.5
    assert rate[honest].mean() < 0.1


def test_bots_view_hundreds_of_items_a_second_apart(shop: SyntheticShop, sessions: pd.DataFrame):
    bots = _fraud_users(shop, "bot")
    s = sessions[sessions["n_view"] > 0]
    bot_s, human_s = s[s["user_id"].isin(bots)], s[~s["user_id"].isin(bots)]
    assert bot_s["n_view"].median() > 5 * human_s["n_view"].median()
    bot_dwell = (bot_s["minutes"] * 60 / bot_s["n_events"]).median()
    human_dwell = (human_s["minutes"] * 60 / human_s["n_events"]).median()
    assert bot_dwell < 3 < human_dwell


# --- messy text ---------------------------------------------------------------------------
def test_some_texts_carry_pii_and_prompt_injection(shop: SyntheticShop):
    text = shop.events["text"].dropna()
    reviews = shop.events.loc[shop.events["event"] == "review", "text"]
    assert reviews.notna().all() and len(reviews) > 50
    email = text.str.contains(r"[\w.+-]+@[\w-]+\.[\w.]+", regex=True)
    phone = text.str.contains(r"\+?\d[\d ]{8,}\d", regex=True)
    injection = text.str.contains("ignore (?:all )?previous instructions|SYSTEM:", case=False, regex=True)
    assert email.sum() >= 3 and phone.sum() >= 3 and injection.sum() >= 1
    # Messy, not dominant: most texts are ordinary.
    assert (email | phone | injection).mean() < 0.1
    searches = shop.events.loc[shop.events["event"] == "search", "text"]
    assert searches.str.contains("@", regex=False).any()


def test_generate_shop_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="users must be at least 1"):
        generate_shop(users=0)
    with pytest.raises(ValueError, match="days must be at least 7"):
        generate_shop(users=10, days=3)
