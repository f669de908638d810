"""Next-item recommendations: a GRU over the user's item sequence blended with session co-occurrence.

The recommender learns from what happened before a test cutoff C and is measured on the items of
each user's first cart or purchase session after C (``evaluate_recommender``), beside three
baselines computed from the same tables: global popularity, popularity within the user's top
categories, and item-to-item co-occurrence. Candidates leave out what the user already bought,
unless its category is repeat-purchase (``repeat_categories``: buyers re-buy the same item there
far more often than in the shop overall).

Tables (popularity, co-occurrence, repeat categories) are pure functions of the events; the net
is tiny (item + event embeddings, one GRU layer, an output tied to the item embeddings), so one
user's recommendations cost a few milliseconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from shopsight.behavior.models.common import BehaviorModel, ModelError, NotFittedError, Progress, TrainSettings, seed_everything

ITEM_EVENTS: tuple[str, ...] = ("view", "add_to_cart", "purchase")
ITEM_COLUMNS: tuple[str, ...] = ("user_id", "ts", "event", "item_id", "category", "price", "session_id")
TARGET_EVENTS: tuple[str, ...] = ("add_to_cart", "purchase")
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}  # how much an event says about interest
K = 10  # HR@K, NDCG@K
POPULAR_DAYS = 30  # popularity counts carts and purchases in the last 30 days before the as-of time
RECENT_ITEMS = 10  # co-occurrence reads the user's last 10 distinct items
TOP_NEIGHBOURS = 50  # co-occurrence keeps each item's 50 strongest neighbours
REPEAT_FACTOR = 1.5  # a category is repeat-purchase if its buyers re-buy items 1.5x the shop's rate
REPEAT_OFTEN = 0.2  # ...or if one in five of its buyers buys the same item again, whatever the shop's rate
REPEAT_MIN_PAIRS = 20
METHODS: tuple[str, ...] = ("model", "popularity", "category_popularity", "cooccurrence")


# --- the tables (pure functions of the events) -----------------------------------------------


def item_events(events: pd.DataFrame) -> pd.DataFrame:
    """The views, carts and purchases that name an item, oldest first (ties keep their order)."""
    keep = (events["event"].isin(ITEM_EVENTS) & events["item_id"].notna()).to_numpy(dtype=bool)
    rows = events.loc[keep, [c for c in ITEM_COLUMNS if c in events.columns]]  # the few columns it needs: taking all costs most
    return rows.sort_values(["user_id", "ts"], kind="stable")


def repeat_categories(events: pd.DataFrame) -> dict[str, float]:
    """Categories whose buyers buy the same item again: {category: share of (buyer, item) pairs bought in ≥ 2 sessions}.

    A category is repeat-purchase when that share is at least ``REPEAT_FACTOR`` times the
    shop-wide share or at least ``REPEAT_OFTEN`` (and it has ``REPEAT_MIN_PAIRS`` pairs): in a
    grocer (Complete Journey) many are, in the demo shop only Grocery.
    """
    buys = events[(events["event"] == "purchase") & events["item_id"].notna() & events["category"].notna()]
    if buys.empty:
        return {}
    pairs = buys.groupby([buys["user_id"].astype(str), buys["item_id"].astype(str)]).agg(
        sessions=("session_id", "nunique"), category=("category", "first"))
    pairs["again"] = pairs["sessions"] >= 2
    overall = float(pairs["again"].mean())
    by_cat = pairs.groupby(pairs["category"].astype(str))["again"].agg(["mean", "size"])
    often = (by_cat["mean"] >= max(REPEAT_FACTOR * overall, 1e-9)) | (by_cat["mean"] >= REPEAT_OFTEN)
    keep = by_cat[(by_cat["size"] >= REPEAT_MIN_PAIRS) & often]
    return {str(c): round(float(v), 4) for c, v in keep["mean"].items()}


def item_vocabulary(events: pd.DataFrame, max_items: int) -> pd.DataFrame:
    """The items a model can recommend: the ``max_items`` most carted/bought (then viewed), with category and price."""
    rows = item_events(events)
    w = rows["event"].map(EVENT_WEIGHTS).astype("float64")
    score = w.groupby(rows["item_id"].astype(str)).sum().sort_values(ascending=False, kind="stable")
    ids = score.index[:max_items]
    info = rows.assign(item_id=rows["item_id"].astype(str)).drop_duplicates("item_id", keep="last").set_index("item_id")
    return pd.DataFrame({"item_id": ids, "category": info["category"].reindex(ids).astype("string").to_numpy(),
                         "price": pd.to_numeric(info["price"].reindex(ids), errors="coerce").to_numpy()})


def popularity(events: pd.DataFrame, items: pd.Index, asof: pd.Timestamp, days: int = POPULAR_DAYS) -> np.ndarray:
    """Per item: how many distinct users carted or bought it in the ``days`` before ``asof``."""
    recent = events[events["event"].isin(TARGET_EVENTS) & (events["ts"] < asof) & (events["ts"] >= asof - pd.Timedelta(days=days))]
    n = recent.groupby(recent["item_id"].astype(str))["user_id"].nunique()
    return n.reindex(items).fillna(0).to_numpy(dtype="float64")


def cooccurrence(events: pd.DataFrame, items: pd.Index, top_k: int = TOP_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item co-occurrence from sessions: of the sessions that show item i, the share that cart or buy item j.

    Returns (neighbours [n_items, top_k] item positions, -1 padded; shares [n_items, top_k]), strongest first.
    """
    from scipy import sparse

    rows = item_events(events)
    col = items.get_indexer(rows["item_id"].astype(str))
    ok = col >= 0
    rows, col = rows[ok], col[ok]
    s_codes, _ = pd.factorize(rows["session_id"].astype(str))
    n_s, n_i = int(s_codes.max()) + 1 if len(s_codes) else 0, len(items)
    seen = sparse.csr_matrix((np.ones(len(col)), (s_codes, col)), shape=(n_s, n_i))
    seen.data[:] = 1.0
    tgt = rows["event"].isin(TARGET_EVENTS).to_numpy()
    took = sparse.csr_matrix((np.ones(int(tgt.sum())), (s_codes[tgt], col[tgt])), shape=(n_s, n_i))
    took.data[:] = 1.0
    both = (seen.T @ took).tocsr()  # [i, j] = sessions showing i that cart/buy j (duplicates summed above are set to 1)
    both.setdiag(0)
    both.eliminate_zeros()
    shown = np.asarray(seen.sum(axis=0)).ravel()
    neigh = np.full((n_i, top_k), -1, dtype="int64")
    share = np.zeros((n_i, top_k), dtype="float32")
    for i in range(n_i):
        lo, hi = both.indptr[i], both.indptr[i + 1]
        if hi == lo:
            continue
        j, v = both.indices[lo:hi], both.data[lo:hi]
        top = np.lexsort((j, -v))[:top_k]
        neigh[i, : len(top)] = j[top]
        share[i, : len(top)] = v[top] / max(shown[i], 1.0)
    return neigh, share


DEFAULT_BLEND = (0.5, 0.25, 0.25)


def _blend(parts: dict[str, np.ndarray], w: Sequence[float]) -> np.ndarray:
    """The model's score: weighted GRU, co-occurrence and category parts; popularity breaks ties."""
    return w[0] * parts["gru"] + w[1] * parts["cooc"] + w[2] * parts["category"] + 1e-6 * parts["popularity"]


def _top(scores: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    s = np.where(allowed, scores, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return [int(i) for i in top if np.isfinite(s[i])]


# --- the net ----------------------------------------------------------------------------------


class ItemSequenceNet(nn.Module):
    """Item + event embeddings → one GRU layer → next-item logits (output tied to the item embeddings).

    Item id 0 is padding; ids 1..n_items are the vocabulary. ``forward`` gives logits at every
    position [B, L, n_items]; ``last`` at each sequence's last event [B, n_items].
    """

    def __init__(self, n_items: int, n_events: int, emb_dim: int = 32, hidden: int = 48, dropout: float = 0.2) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, emb_dim, padding_idx=0)
        self.events = nn.Embedding(n_events + 1, emb_dim, padding_idx=0)
        self.gru = nn.GRU(emb_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, emb_dim)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, items: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.drop(self.items(items) + self.events(events)))
        return self.proj(self.drop(h)) @ self.items.weight[1:].T + self.bias

    def last(self, items: torch.Tensor, events: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits after each sequence's last event only (scoring the items at one position, not all)."""
        h, _ = self.gru(self.items(items) + self.events(events))
        h = h[torch.arange(len(h)), (lengths - 1).clamp(min=0)]
        return self.proj(h) @ self.items.weight[1:].T + self.bias


@dataclass
class UserHistory:
    """What the recommender reads of one user: recent item sequence, bought items, category interest."""

    items: np.ndarray  # vocabulary positions (0-based) of the last events, oldest first; -1 = out of vocabulary
    events: np.ndarray  # event positions in ITEM_EVENTS
    bought: set[int]
    category_weight: dict[str, float]


# --- the model --------------------------------------------------------------------------------


class RecommendModel(BehaviorModel):
    """Next carted/bought item: a GRU over the item sequence blended with session co-occurrence.

    Args:
        horizon_days: the test window after the cutoff C (default 14 days).
        max_items: the vocabulary size (the most carted/bought items).
        settings: training knobs (``TrainSettings``: seed, threads, epochs, max_len, sizes).
    """

    name: ClassVar[str] = "recommend"
    popular_days: ClassVar[int] = POPULAR_DAYS

    def __init__(self, horizon_days: int = 14, max_items: int = 3000, settings: TrainSettings | None = None) -> None:
        self.horizon_days = horizon_days
        self.max_items = max_items
        # 40 s of GRU training: on the 5,000-user demo, fit + evaluation + scores take 57 s (~10% of `shopsight demo`)
        self.settings = settings or TrainSettings(max_len=50, epochs=12, max_seconds=40.0)
        self.net_: ItemSequenceNet | None = None
        self.cutoff_: pd.Timestamp | None = None

    # fitting -------------------------------------------------------------------------------
    def fit(self, events: pd.DataFrame, *, labels: pd.DataFrame | None = None, cutoff: pd.Timestamp | None = None,
            progress: Progress | None = None) -> "RecommendModel":
        """Learn the tables and the net from the events before the cutoff C (default: ``horizon_days`` before the end)."""
        from shopsight.behavior.models.churn import end_of_events

        s = self.settings
        seed_everything(s.seed, s.threads)
        start = time.perf_counter()
        end = end_of_events(events)
        C = pd.Timestamp(cutoff) if cutoff is not None else end - pd.Timedelta(days=self.horizon_days)
        past = events[events["ts"] < C]
        if not past["event"].isin(TARGET_EVENTS).any():
            raise ModelError("recommendations need carted or bought items before the cutoff; these events have none")
        self._fit_tables(past, C)
        report = progress or (lambda stage, frac: None)
        report("tables", 1.0)
        self.net_ = ItemSequenceNet(len(self.items_), len(ITEM_EVENTS), emb_dim=s.emb_dim, hidden=s.hidden, dropout=s.dropout)
        users = np.array(sorted(past["user_id"].astype(str).unique()))
        rng = np.random.default_rng(s.seed)
        val_users = set(users[rng.random(len(users)) < 0.2])
        rows = item_events(past)
        train_rows = rows[~rows["user_id"].astype(str).isin(val_users)]
        self.fit_ = self._train_net(train_rows, report)
        self.blend_ = self._choose_blend(rows[rows["user_id"].astype(str).isin(val_users)])
        self.cutoff_ = C
        self.train_seconds_ = time.perf_counter() - start
        return self

    def _fit_tables(self, past: pd.DataFrame, asof: pd.Timestamp) -> None:
        vocab = item_vocabulary(past, self.max_items)
        self.items_ = pd.Index(vocab["item_id"].astype(str), name="item_id")
        self.item_category_ = vocab["category"].fillna("").astype(str).to_numpy()
        self.item_price_ = vocab["price"].to_numpy(dtype="float64")
        self.popularity_ = popularity(past, self.items_, asof)
        self.neighbours_, self.shares_ = cooccurrence(past, self.items_)
        self.repeat_categories_ = repeat_categories(past)
        self.tables_asof_ = asof

    def _sequences(self, rows: pd.DataFrame, max_len: int, *, windows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item ids [n, L] 1-based, event ids [n, L] 1-based, lengths [n]): each user's events, in windows or the last only."""
        item = self.items_.get_indexer(rows["item_id"].astype(str)) + 1  # 0 = out of vocabulary, also padding
        event = pd.Index(ITEM_EVENTS).get_indexer(rows["event"].astype(str)) + 1
        keep = item > 0
        user = rows["user_id"].astype(str).to_numpy()[keep]
        item, event = item[keep], event[keep]
        bounds = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
        seqs: list[tuple[np.ndarray, np.ndarray]] = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            b_items, b_events = item[a:b], event[a:b]
            if windows:  # the user's last 6 windows of max_len + 1 (inputs and next-item targets)
                for end in range(len(b_items), max(len(b_items) - 6 * max_len, 1), -max_len):
                    lo = max(0, end - max_len - 1)
                    if end - lo >= 2:
                        seqs.append((b_items[lo:end], b_events[lo:end]))
            else:
                seqs.append((b_items[-max_len:], b_events[-max_len:]))
        L = max_len + 1 if windows else max_len
        out_i = np.zeros((len(seqs), L), dtype="int64")
        out_e = np.zeros((len(seqs), L), dtype="int64")
        lengths = np.zeros(len(seqs), dtype="int64")
        for n, (si, se) in enumerate(seqs):
            out_i[n, : len(si)], out_e[n, : len(se)], lengths[n] = si, se, len(si)
        return out_i, out_e, lengths

    def _train_net(self, rows: pd.DataFrame, report: Progress) -> dict[str, Any]:
        s = self.settings
        assert self.net_ is not None
        items, events, lengths = self._sequences(rows, s.max_len, windows=True)
        if not len(items):
            raise ModelError("recommendations need users with at least two item events before the cutoff")
        x_i, x_e = torch.from_numpy(items[:, :-1]), torch.from_numpy(events[:, :-1])
        y = torch.from_numpy(items[:, 1:] - 1)  # -1: padding, ignored
        # carts and purchases are what we predict; views still teach the sequence, at a quarter weight
        w = torch.where(torch.from_numpy(events[:, 1:]) >= 2, 1.0, 0.25) * (y >= 0)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=3e-3, weight_decay=s.weight_decay)
        gen = torch.Generator().manual_seed(s.seed)
        start, epoch, history = time.perf_counter(), 0, []
        for epoch in range(1, s.epochs + 1):
            self.net_.train()
            order = torch.randperm(len(x_i), generator=gen)
            total = 0.0
            for b0 in range(0, len(order), s.batch_size):
                b = order[b0 : b0 + s.batch_size]
                opt.zero_grad()
                logits = self.net_(x_i[b], x_e[b])
                loss_all = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[b].reshape(-1).clamp(min=0), reduction="none")
                loss = (loss_all * w[b].reshape(-1)).sum() / w[b].sum().clamp(min=1e-6)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net_.parameters(), 5.0)
                opt.step()
                total += float(loss.detach()) * len(b)
            history.append(round(total / len(order), 4))
            report("train", epoch / s.epochs)
            if time.perf_counter() - start > s.max_seconds:
                break
        self.net_.eval()
        return {"epochs_run": epoch, "train_loss": history, "seconds": round(time.perf_counter() - start, 1), "n_windows": int(len(x_i))}

    def _choose_blend(self, val_rows: pd.DataFrame) -> tuple[float, float, float]:
        """The blend weights (GRU, co-occurrence, category interest; a grid of quarters) with the best HR@10
        on held-out users' last cart/purchase session, read from their events before that session began."""
        target = val_rows[val_rows["event"].isin(TARGET_EVENTS)]
        if target.empty:
            return DEFAULT_BLEND
        last = target.sort_values("ts", kind="stable").groupby(target["user_id"].astype(str))["session_id"].last()
        in_last = val_rows["session_id"].astype(str).to_numpy() == val_rows["user_id"].astype(str).map(last.astype(str)).to_numpy()
        begins = val_rows[in_last].groupby(val_rows.loc[in_last, "user_id"].astype(str))["ts"].min()
        history = val_rows[val_rows["ts"] < val_rows["user_id"].astype(str).map(begins)]
        targets = _item_sets(val_rows[in_last & val_rows["event"].isin(TARGET_EVENTS).to_numpy()])
        hs = list(self.histories(history, list(targets.index)).values())
        parts = [self.components(h) for h in hs]
        allowed = [self.candidates(h) for h in hs]
        grid = [(a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5 - a)]
        hr: dict[tuple[float, float, float], float] = {}
        for w in grid:
            ranked = {u: [self.items_[i] for i in _top(_blend(c, w), ok, K)] for u, c, ok in zip(targets.index, parts, allowed)}
            hr[w] = ranking_report(ranked, targets, len(self.items_))[f"hr_at_{K}"] or 0.0
        best = max(grid, key=lambda w: (hr[w], w))
        self.blend_validation_ = {"n_users": len(targets), "best_hr_at_10": round(hr[best], 4),
                                  "gru_only_hr_at_10": round(hr[(1.0, 0.0, 0.0)], 4)}
        return best

    # inference -----------------------------------------------------------------------------
    def history(self, user_events: pd.DataFrame) -> UserHistory:
        """One user's item sequence (last ``max_len`` events), bought items and recency-weighted category interest."""
        rows = item_events(user_events)
        buys = rows[rows["event"] == "purchase"]
        bought = {int(p) for p in self.items_.get_indexer(buys["item_id"].astype(str)) if p >= 0}
        rows = rows.tail(4 * self.settings.max_len)
        pos = self.items_.get_indexer(rows["item_id"].astype(str))
        ev = pd.Index(ITEM_EVENTS).get_indexer(rows["event"].astype(str))
        w = rows["event"].map(EVENT_WEIGHTS).astype("float64").to_numpy()
        cats = rows["category"].astype("string").fillna("").to_numpy()
        weight: dict[str, float] = {}
        for c, v in zip(cats, w):
            if c:
                weight[str(c)] = weight.get(str(c), 0.0) + float(v)
        return UserHistory(pos[-self.settings.max_len:], ev[-self.settings.max_len:], bought, weight)

    def candidates(self, h: UserHistory) -> np.ndarray:
        """True for each vocabulary item the user may be shown: not bought before, unless its category is repeat-purchase."""
        ok = np.ones(len(self.items_), dtype=bool)
        for p in h.bought:
            if self.item_category_[p] not in self.repeat_categories_:
                ok[p] = False
        return ok

    def components(self, h: UserHistory, *, with_gru: bool = True) -> dict[str, np.ndarray]:
        """The blend's parts, each a distribution over the items: the GRU's next item, co-occurrence with the
        user's recent items, and P(category of interest) x P(item | category) by popularity."""
        co = self.cooc_scores(h)
        gru = self.gru_probabilities([h])[0] if with_gru else np.zeros(len(self.items_))
        return {"gru": gru, "cooc": co / co.sum() if co.sum() > 0 else co,
                "category": self.category_scores(h), "popularity": np.log1p(self.popularity_)}

    def scores(self, h: UserHistory, method: str) -> np.ndarray:
        """Each vocabulary item's score for one user under ``method`` (one of ``METHODS``); higher is better."""
        pop = np.log1p(self.popularity_) * 1e-3  # ties (and users with no signal) fall back to popularity
        if method == "popularity":
            return pop
        if method == "category_popularity":
            top = sorted(h.category_weight, key=lambda c: -h.category_weight[c])[:3]
            bonus = np.zeros(len(self.items_))
            for rank, c in enumerate(top):
                bonus[self.item_category_ == c] = 3 - rank
            return bonus + pop
        if method == "cooccurrence":
            return self.cooc_scores(h) + pop
        if method != "model":
            raise ModelError(f"unknown recommendation method '{method}': choose one of {', '.join(METHODS)}")
        return _blend(self.components(h, with_gru=self.blend_[0] > 0), self.blend_)  # the net runs only if it has weight

    def category_scores(self, h: UserHistory) -> np.ndarray:
        """P(category) from the user's event-weighted interest in their top 3 x P(item | category) by popularity."""
        top = sorted(h.category_weight, key=lambda c: -h.category_weight[c])[:3]  # measured: sharper than every category
        weights = {c: h.category_weight[c] for c in top}
        total = sum(weights.values())
        out = np.zeros(len(self.items_))
        if total <= 0:
            return out
        pop = self.popularity_ + 1.0
        for c, w in weights.items():
            mask = self.item_category_ == c
            if mask.any():
                out[mask] = w / total * pop[mask] / pop[mask].sum()
        return out

    def cooc_scores(self, h: UserHistory) -> np.ndarray:
        """Sum over the user's last distinct items (recent ones weigh more) of each neighbour's co-occurrence share."""
        out = np.zeros(len(self.items_))
        recent = [int(p) for p in dict.fromkeys(reversed(h.items.tolist())) if p >= 0][:RECENT_ITEMS]
        for rank, p in enumerate(recent):
            nb, sh = self.neighbours_[p], self.shares_[p]
            ok = nb >= 0
            np.add.at(out, nb[ok], sh[ok] * 0.8**rank)
        return out

    def gru_probabilities(self, hs: Sequence[UserHistory]) -> np.ndarray:
        """The net's next-item probabilities [n_users, n_items]; a user with no item in the vocabulary gets zeros."""
        self._check_fitted()
        assert self.net_ is not None
        L = self.settings.max_len
        items = np.zeros((len(hs), L), dtype="int64")
        events = np.zeros((len(hs), L), dtype="int64")
        lengths = np.zeros(len(hs), dtype="int64")
        for n, h in enumerate(hs):
            keep = h.items >= 0
            si, se = h.items[keep][-L:] + 1, h.events[keep][-L:] + 1
            items[n, : len(si)], events[n, : len(se)], lengths[n] = si, se, len(si)
        out = np.zeros((len(hs), len(self.items_)))
        has = lengths > 0
        if has.any():
            with torch.no_grad():
                logits = self.net_.last(torch.from_numpy(items[has]), torch.from_numpy(events[has]), torch.from_numpy(lengths[has]))
                out[has] = torch.softmax(logits, dim=-1).numpy()
        return out

    def recommend(self, user_events: pd.DataFrame, k: int = K, method: str = "model") -> list[int]:
        """The top-``k`` vocabulary positions for one user (their events up to now), best first."""
        return self.recommend_for(self.history(user_events), k, method)

    def recommend_for(self, h: UserHistory, k: int = K, method: str = "model") -> list[int]:
        """``recommend`` from a history already read (the tool reads it once for the ranking and the reasons)."""
        return _top(self.scores(h, method), self.candidates(h), k)

    def histories(self, events: pd.DataFrame, users: Sequence[str]) -> dict[str, UserHistory]:
        """Each user's ``history`` from ``events`` (read once, then ranked by every method)."""
        self._check_fitted()
        rows = item_events(events[events["user_id"].astype(str).isin(set(map(str, users)))])
        groups = {str(u): g for u, g in rows.groupby(rows["user_id"].astype(str), sort=False)}
        empty = rows.iloc[:0]
        return {str(u): self.history(groups.get(str(u), empty)) for u in users}

    def rank_users(self, events: pd.DataFrame | dict[str, UserHistory], users: Sequence[str], *, method: str = "model",
                   k: int = K) -> dict[str, list[str]]:
        """Top-``k`` item ids per user, by ``method``, from ``events`` (or their ``histories``)."""
        hs = events if isinstance(events, dict) else self.histories(events, users)
        return {str(u): [self.items_[i] for i in self.recommend_for(hs[str(u)], k, method)] for u in users}

    def neighbour_share(self, anchor: int, item: int) -> float:
        """The co-occurrence share of ``item`` among the sessions that show ``anchor`` (0 if not a top neighbour)."""
        hit = np.flatnonzero(self.neighbours_[anchor] == item)
        return float(self.shares_[anchor][hit[0]]) if len(hit) else 0.0

    # the BehaviorModel contract ----------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.net_ is None:
            raise NotFittedError("the recommend model is not fitted: train it with `shopsight train recommend`")

    def predict_proba(self, events: pd.DataFrame, user_ids: Sequence[str] | None = None) -> pd.Series:
        raise ModelError("the recommend model ranks items (recommend / rank_users); it has no per-user probability")

    def explain(self, events: pd.DataFrame, user_id: str) -> dict[str, Any]:
        raise ModelError("the recommend model's reasons are given per item by the recommend_items tool")

    def glossary(self) -> Any:
        from shopsight.behavior.models.glossary import Glossary

        return Glossary(terms={})

    def typical_card(self) -> dict[str, Any]:
        return {}

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert self.net_ is not None
        state = {f"net.{k}": v for k, v in self.net_.state_dict().items()}
        state.update({"popularity": torch.from_numpy(self.popularity_.astype("float32")),
                      "neighbours": torch.from_numpy(self.neighbours_), "shares": torch.from_numpy(self.shares_),
                      "price": torch.from_numpy(np.nan_to_num(self.item_price_, nan=-1.0).astype("float32"))})
        spec = {"horizon_days": self.horizon_days, "max_items": self.max_items, "settings": self.settings.to_dict(),
                "items": list(self.items_), "item_category": list(self.item_category_), "blend": list(self.blend_),
                "repeat_categories": self.repeat_categories_, "tables_asof": self.tables_asof_.isoformat(),
                "cutoff": self.cutoff_.isoformat() if self.cutoff_ is not None else None}
        return state, spec

    @classmethod
    def _from_saved(cls, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> "RecommendModel":
        m = cls(horizon_days=spec["horizon_days"], max_items=spec["max_items"], settings=TrainSettings(**spec["settings"]))
        m.items_ = pd.Index(spec["items"], name="item_id")
        m.item_category_ = np.asarray(spec["item_category"], dtype=object)
        m.blend_ = tuple(float(w) for w in spec["blend"])
        m.repeat_categories_ = dict(spec["repeat_categories"])
        m.tables_asof_ = pd.Timestamp(spec["tables_asof"])
        m.popularity_ = state_dict["popularity"].numpy().astype("float64")
        m.neighbours_ = state_dict["neighbours"].numpy()
        m.shares_ = state_dict["shares"].numpy()
        price = state_dict["price"].numpy().astype("float64")
        m.item_price_ = np.where(price < 0, np.nan, price)
        s = m.settings
        m.net_ = ItemSequenceNet(len(m.items_), len(ITEM_EVENTS), emb_dim=s.emb_dim, hidden=s.hidden, dropout=s.dropout)
        m.net_.load_state_dict({k[4:]: v for k, v in state_dict.items() if k.startswith("net.")})
        m.net_.eval()
        return m


# --- evaluation -------------------------------------------------------------------------------


def next_targets(events: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: float) -> pd.Series:
    """Per user with history before ``cutoff``: the items of their first cart/purchase session in [cutoff, cutoff + H)."""
    fut = events[(events["ts"] >= cutoff) & (events["ts"] < cutoff + pd.Timedelta(days=horizon_days))
                 & events["event"].isin(TARGET_EVENTS) & events["item_id"].notna()]
    seen = set(events.loc[events["ts"] < cutoff, "user_id"].astype(str).unique())
    fut = fut[fut["user_id"].astype(str).isin(seen)].sort_values("ts", kind="stable")
    first = fut.groupby(fut["user_id"].astype(str))["session_id"].first()
    fut = fut[fut["session_id"].astype(str).to_numpy() == fut["user_id"].astype(str).map(first.astype(str)).to_numpy()]
    return _item_sets(fut)


def _item_sets(rows: pd.DataFrame) -> pd.Series:
    """Per user: the set of item ids of ``rows``."""
    sets: dict[str, set[str]] = {}
    for u, i in zip(rows["user_id"].astype(str), rows["item_id"].astype(str)):
        sets.setdefault(u, set()).add(i)
    return pd.Series(sets, dtype=object).sort_index()


def ranking_report(ranked: dict[str, list[str]], targets: pd.Series, n_items: int, k: int = K) -> dict[str, Any]:
    """HR@k (a target item in the top k), NDCG@k (of the best-ranked target item) and catalogue coverage."""
    hits, gains, shown = [], [], set()
    for u, t in targets.items():
        top = ranked.get(u, [])[:k]
        shown.update(top)
        ranks = [r for r, i in enumerate(top) if i in t]
        hits.append(bool(ranks))
        gains.append(1.0 / math.log2(ranks[0] + 2) if ranks else 0.0)
    return {f"hr_at_{k}": round(float(np.mean(hits)), 4) if hits else None,
            f"ndcg_at_{k}": round(float(np.mean(gains)), 4) if gains else None,
            "coverage": round(len(shown) / max(n_items, 1), 4), "n": len(hits)}


def evaluate_recommender(model: RecommendModel, events: pd.DataFrame, progress: Progress | None = None) -> dict[str, Any]:
    """The model card: HR@10, NDCG@10 and coverage of the model and the three baselines at the model's cutoff."""
    from shopsight.behavior.models.churn import end_of_events

    if model.cutoff_ is None:
        raise NotFittedError("the recommend model has no training record to evaluate: call fit(events) first")
    C = model.cutoff_
    report = progress or (lambda stage, frac: None)
    targets = next_targets(events, C, model.horizon_days)
    users = list(targets.index)
    hs = model.histories(events[events["ts"] < C], users)
    metrics: dict[str, dict[str, Any]] = {}
    for n, method in enumerate(METHODS):
        t = time.perf_counter()
        ranked = model.rank_users(hs, users, method=method)
        metrics[method] = {**ranking_report(ranked, targets, len(model.items_)), "rank_seconds": round(time.perf_counter() - t, 2)}
        report("evaluate", (n + 1) / len(METHODS))
    return {
        "task": f"next carted or bought items: the first cart/purchase session in the {model.horizon_days} days after the cutoff; "
                f"HR@{K} = a session item in the top {K}, NDCG@{K} of the best-ranked one, coverage = share of the "
                f"{len(model.items_)} items ever recommended",
        "data_window": {"first_event": events["ts"].min().isoformat(), "last_event": events["ts"].max().isoformat(),
                        "test_cutoff": C.isoformat(), "scored_asof": end_of_events(events).isoformat()},
        "split": {"train": f"events before {C.isoformat()} (20% of users held out to choose the blend)",
                  "test": f"first cart/purchase session in [{C.date()}, +{model.horizon_days} days)", "n_test_users": len(users)},
        "metrics": metrics["model"],
        "baselines": {m: metrics[m] for m in METHODS if m != "model"},
        "blend": {"weights": dict(zip(("gru", "cooccurrence", "category"), model.blend_)),
                  "validation": getattr(model, "blend_validation_", {})},
        "repeat_categories": model.repeat_categories_,
        "n_items": len(model.items_),
        "train_seconds": round(model.train_seconds_, 2),
        "training": getattr(model, "fit_", {}),
        "settings": model.settings.to_dict(),
    }


def recommend_scores(model: RecommendModel, events: pd.DataFrame) -> pd.DataFrame:
    """Every user's top-10 item ids as of the end of the events (the saved score table)."""
    from shopsight.behavior.models.churn import end_of_events

    users = sorted(events["user_id"].astype(str).unique())
    ranked = model.rank_users(events, users)
    return pd.DataFrame({"user_id": users, "items": [ranked[u] for u in users], "asof": end_of_events(events)})

