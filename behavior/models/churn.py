"""Churn: P(no purchase in the next H days) from a user's behaviour sentence and RFM features.

Training follows the benchmark protocol: the test cutoff C leaves H days of future to label;
training examples are stacked snapshots at C − H − 7k (k = 0..n−1), so the last training label
window ends at C and nothing after C reaches training. The latest training snapshot is the
validation slice (early stopping, calibration, threshold). ``evaluation.evaluate`` scores the
test snapshot at C beside the baselines (days since last purchase, logistic regression and
LightGBM on the same features, BG/NBD) for the model card.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from shopsight.behavior.features import rfm_features, top_categories
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
    ablation_factors_from,
    build_net,
    fit_binary,
    fit_vocab,
    predict_logits,
    tokenize_events,
    user_evidence,
)
from shopsight.behavior.models.glossary import (
    RFM_GLOSSARY,
    Glossary,
    RuleContext,
    RuleSaid,
    RuleTerm,
    day_of,
    show_days,
    show_percent,
    show_ratio,
    typical_values,
)
from shopsight.behavior.models.metrics import best_f1_threshold
from shopsight.behavior.models.reasons import plan_reasons
from shopsight.behavior.models.rules import rows_of_users

DAY = pd.Timedelta(days=1)


def end_of_events(events: pd.DataFrame) -> pd.Timestamp:
    """Midnight after the last event: the "as of" time of predictions on these events."""
    if events.empty:
        raise ModelError("no events to score: the workspace's event table is empty")
    return events["ts"].max().floor("D") + DAY


@dataclass
class Snapshot:
    """One churn snapshot: features of the population as of ``asof`` and labels from [asof, asof + H)."""

    asof: pd.Timestamp
    features: pd.DataFrame  # index user_id
    seqs: Sequences
    y: np.ndarray  # 1 = no purchase in the horizon (churn)


@dataclass
class TrainingSet:
    """The stacked training snapshots (newest first) that ``fit`` learns from and the baselines train on."""

    features: pd.DataFrame
    seqs: Sequences
    y: np.ndarray  # 1 = churn
    val_mask: np.ndarray  # the validation rows (see ``split_snapshots``)


def churn_labels(events: pd.DataFrame, asof: pd.Timestamp, horizon_days: int, users: pd.Index) -> np.ndarray:
    """1 for each user in ``users`` with no purchase in [asof, asof + horizon), else 0."""
    end = asof + pd.Timedelta(days=horizon_days)
    buys = events[(events["event"] == "purchase") & (events["ts"] >= asof) & (events["ts"] < end)]
    return (~users.isin(pd.Index(buys["user_id"].unique()))).astype("int64")


def population(events: pd.DataFrame, asof: pd.Timestamp, active_days: int | None) -> pd.Index:
    """Users with any event in [asof − active_days, asof) (every user seen before asof when None)."""
    lo = events["ts"] >= asof - pd.Timedelta(days=active_days) if active_days else True
    seen = events[(events["ts"] < asof) & lo]
    return pd.Index(sorted(seen["user_id"].unique()), name="user_id")


class ChurnModel(BehaviorModel):
    """P(no purchase in the next ``horizon_days``) per user: GRU over events + MLP over RFM features.

    Args:
        horizon_days: H, the churn window.
        n_snapshots: training snapshots stacked at C − H − step·k.
        snapshot_step_days: the step between training snapshots.
        active_days: population = users with an event in the last ``active_days`` before a
            snapshot (None: every user seen so far).
        n_categories: purchase-share features for this many top categories.
        use_sequence: include the GRU branch (False: tabular MLP only).
        val_user_fraction: users whose newest training snapshot validates (early stopping,
            calibration, threshold); their older snapshots are left out of training.
        settings: training knobs (seed, threads, epochs, …).
    """

    name = "churn"
    label_table = "users"  # the demo shop's ground truth: dropout_ts per user
    # Measured (evals/mechanisms.py, 5,000-user demo): the first reason names the lapse for 90% of
    # test churners when the reasons pushing towards the verdict come first, 84% by effect alone.
    reason_ordering = "verdict"

    def __init__(
        self,
        horizon_days: int = 30,
        *,
        n_snapshots: int = 4,
        snapshot_step_days: int = 7,
        active_days: int | None = 90,
        n_categories: int = 6,
        use_sequence: bool = True,
        val_user_fraction: float = 0.2,
        settings: TrainSettings | None = None,
    ) -> None:
        self.horizon_days = horizon_days
        self.val_user_fraction = val_user_fraction
        self.n_snapshots = n_snapshots
        self.snapshot_step_days = snapshot_step_days
        self.active_days = active_days
        self.n_categories = n_categories
        self.use_sequence = use_sequence
        self.settings = settings or TrainSettings()
        self.net_: torch.nn.Module | None = None
        self.vocab_: dict[str, Any] | None = None
        self.categories_: list[str] = []
        self.scaler_: TabularScaler | None = None
        self.calibration_ = Calibration()
        self.threshold_: float = 0.5
        # the training record ``evaluation.evaluate`` reports (not saved: a loaded model has its card)
        self.cutoff_: pd.Timestamp | None = None
        self.train_asofs_: list[pd.Timestamp] = []
        self.fit_result_: FitResult | None = None
        self.train_seconds_: float | None = None

    # --- data ---------------------------------------------------------------------------
    def snapshot(self, events: pd.DataFrame, asof: pd.Timestamp, users: pd.Index | None = None) -> Snapshot:
        """Features, sequences and churn labels of ``users`` (default: the active population) at ``asof``."""
        if users is None:
            users = population(events, asof, self.active_days)
        past = events[events["ts"] < asof]
        feats = rfm_features(past, asof, categories=self.categories_).reindex(users)
        seqs = tokenize_events(past[past["user_id"].isin(users)], self.vocab_ or {}, keys=users, max_len=self.settings.max_len) if self.use_sequence else _empty_seqs(users)
        return Snapshot(asof=asof, features=feats, seqs=seqs, y=churn_labels(events, asof, self.horizon_days, users))

    def training_cutoffs(self, cutoff: pd.Timestamp) -> list[pd.Timestamp]:
        """Snapshot times C − H − step·k, newest first; each label window ends at or before C."""
        H = pd.Timedelta(days=self.horizon_days)
        return [cutoff - H - pd.Timedelta(days=self.snapshot_step_days * k) for k in range(self.n_snapshots)]

    def training_set(self, events: pd.DataFrame, asofs: Sequence[pd.Timestamp], *, progress: Progress | None = None) -> TrainingSet:
        """The snapshots at ``asofs`` (newest first), each with its label window, stacked by ``split_snapshots``.

        Uses the learned vocabulary and categories: ``fit`` learns those first.
        """
        snaps = self.snapshots(events, asofs, progress=progress)
        X, seqs, y, val_mask = split_snapshots(snaps, self.val_user_fraction, seed=self.settings.seed)
        return TrainingSet(features=X, seqs=seqs, y=y, val_mask=val_mask)

    def snapshots(self, events: pd.DataFrame, asofs: Sequence[pd.Timestamp], *, progress: Progress | None = None) -> list[Snapshot]:
        """One ``snapshot`` per time in ``asofs``, each seeing the events before its label window ends.

        Per user: a group of users' events gives those users' rows of the whole table's snapshots
        (the Spark training table runs it per group: ``training_rows``).
        """
        report = progress or (lambda stage, frac: None)
        H = pd.Timedelta(days=self.horizon_days)
        snaps = []
        for i, a in enumerate(asofs):
            snaps.append(self.snapshot(events[events["ts"] < a + H], a))
            report("features", (i + 1) / (len(asofs) + 1))
        return snaps

    def split_times(self, first: pd.Timestamp, last: pd.Timestamp, cutoff: pd.Timestamp | None = None) -> tuple[pd.Timestamp, list[pd.Timestamp]]:
        """The test cutoff C and the training snapshot times (newest first) for events spanning ``first``..``last``.

        Raises:
            ModelError: fewer than two training snapshots fit in the events' span.
        """
        end = pd.Timestamp(last).floor("D") + DAY  # end_of_events
        H = pd.Timedelta(days=self.horizon_days)
        C = pd.Timestamp(cutoff) if cutoff is not None else end - H
        if C.tzinfo is None and pd.Timestamp(first).tzinfo is not None:
            C = C.tz_localize(pd.Timestamp(first).tzinfo)
        train_asofs = [a for a in self.training_cutoffs(C) if a - first >= pd.Timedelta(days=7)]
        if len(train_asofs) < 2:
            raise ModelError(
                f"not enough history for churn with a {self.horizon_days}-day horizon: events span "
                f"{pd.Timestamp(first).date()}..{end.date()}; need about {2 * self.horizon_days + 14} days (or lower --horizon)"
            )
        return C, train_asofs

    def training_rows(self, events: pd.DataFrame, asofs: Sequence[pd.Timestamp], cutoff: pd.Timestamp, val_users: Any,
                      feature_names: Sequence[str]) -> pd.DataFrame:
        """Some users' rows of the training table (``streaming.table_rows``): their stacked training
        snapshots (``split_snapshots``' rows, with ``val_users`` validating) and their test snapshot at ``cutoff``.

        ``events`` holds every event of those users (``Workspace.load_events``' order); ``val_users``
        are the ones among them that the whole table's draw (``validation_users``) picked.
        """
        from shopsight.behavior.models.streaming import table_rows

        snaps = self.snapshots(events, asofs)
        X, seqs, y, val, which = stack_snapshots(snaps, pd.Index(val_users))
        test = self.snapshot(events[events["ts"] < cutoff + pd.Timedelta(days=self.horizon_days)], cutoff)
        split = np.where(val, "validation", "train")
        return pd.concat([
            table_rows(split, which, seqs.keys, X, seqs, y, feature_names),
            table_rows(np.full(len(test.y), "test"), np.full(len(test.y), -1), test.seqs.keys, test.features, test.seqs, test.y, feature_names),
        ], ignore_index=True)

    def learn_vocabulary(self, before_c: pd.DataFrame) -> None:
        """The token vocabulary and the share categories, from the events before the test cutoff."""
        self.vocab_ = fit_vocab(before_c)
        self.categories_ = top_categories(before_c, self.n_categories)

    # --- training -----------------------------------------------------------------------
    def fit(
        self,
        events: pd.DataFrame,
        *,
        labels: pd.DataFrame | None = None,
        cutoff: pd.Timestamp | None = None,
        progress: Progress | None = None,
    ) -> "ChurnModel":
        """Learn from snapshots whose label windows end by ``cutoff``; nothing at or after it is seen.

        Args:
            events: canonical events.
            labels: unused (the events' purchases are the labels); accepted for the shared
                interface. ``evaluation.evaluate`` scores the test snapshot against them.
            cutoff: the test cutoff C (default: H days before the end of the events).
            progress: optional ``progress(stage, fraction)`` callback.
        """
        t0 = time.perf_counter()
        report = progress or (lambda stage, frac: None)
        end_of_events(events)  # raises on an empty table
        C, train_asofs = self.split_times(events["ts"].min(), events["ts"].max(), cutoff)
        report("features", 0.0)
        self.learn_vocabulary(events[events["ts"] < C])
        train = self.training_set(events, train_asofs, progress=report)
        report("features", 1.0)
        self._fit_arrays(train.features, train.seqs, train.y, train.val_mask, progress=report)
        # "typical" = the training snapshots' active customers (an event in the 90 days before a snapshot)
        self.typical_ = typical_values(train.features, self.glossary())
        self.cutoff_, self.train_asofs_ = C, train_asofs
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def table_params(self) -> dict[str, Any]:
        """What a training table built for this model depends on (its manifest records them; ``fit_table`` checks them)."""
        return {"horizon_days": self.horizon_days, "n_snapshots": self.n_snapshots, "snapshot_step_days": self.snapshot_step_days,
                "active_days": self.active_days, "n_categories": self.n_categories, "use_sequence": self.use_sequence,
                "val_user_fraction": self.val_user_fraction, "seed": self.settings.seed, "max_len": self.settings.max_len}

    def fit_table(self, table: Any, *, progress: Progress | None = None, buffer_rows: int | None = None,
                  typical_rows: int = 200_000) -> "ChurnModel":
        """Learn from a training table in Parquet shards (``streaming.TrainingTable``), a batch at a time.

        The table holds the rows ``training_set`` builds (built on Spark by the same code); the
        scaler, warm start and training stream them (``streaming.fit_binary_streaming``). The
        typical values come from at most ``typical_rows`` of them (all, on a table that small).

        Raises:
            ModelError: the table was built for another model or other settings.
        """
        from shopsight.behavior.models.streaming import BUFFER_ROWS, TableError, fit_binary_streaming, scaler_from_table

        t0 = time.perf_counter()
        m = table.manifest
        if m.get("model") != self.name or m.get("params") != self.table_params():
            raise TableError(f"the training table {table.folder} was built for {m.get('model')} with {m.get('params')}, "
                             f"not churn with {self.table_params()}: build it again with these settings")
        self.vocab_, self.categories_ = m["vocab"], list(m["categories"])
        self.cutoff_ = pd.Timestamp(m["cutoff"])
        self.train_asofs_ = [pd.Timestamp(a) for a in m["train_asofs"]]
        self.scaler_ = scaler_from_table(table, "train")
        s = self.settings
        self.net_ = build_net({
            "vocab_size": int(self.vocab_["size"]) if (self.use_sequence and self.vocab_) else 0,
            "token_dims": list(self.vocab_["dims"]) if (self.use_sequence and self.vocab_) else None,
            "n_tabular": len(self.scaler_.columns), "emb_dim": s.emb_dim, "hidden": s.hidden, "dropout": s.dropout,
        })
        result, record = fit_binary_streaming(self.net_, table, self.scaler_, settings=s, progress=progress,
                                              buffer_rows=buffer_rows or BUFFER_ROWS)
        self.calibration_ = result.calibration
        self.threshold_ = best_f1_threshold(record.y_val, self.calibration_.apply(result.val_logits))
        self.fit_result_, self.stream_record_ = result, record
        X, _, _, _ = table.frame(("validation", "train"), limit=typical_rows)
        self.typical_ = typical_values(X, self.glossary())
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _fit_arrays(
        self, X: pd.DataFrame, seqs: Sequences, y: np.ndarray, val_mask: np.ndarray, *, progress: Progress | None = None
    ) -> "ChurnModel":
        """Fit scaler, net, calibration and threshold on prepared rows (used by ``fit`` and the benchmark)."""
        self.scaler_ = TabularScaler.fit(X[~val_mask])
        Xs = self.scaler_.transform(X)
        s = self.settings
        self.net_ = build_net({
            "vocab_size": int(self.vocab_["size"]) if (self.use_sequence and self.vocab_) else 0,
            "token_dims": list(self.vocab_["dims"]) if (self.use_sequence and self.vocab_) else None,
            "n_tabular": Xs.shape[1], "emb_dim": s.emb_dim, "hidden": s.hidden, "dropout": s.dropout,
        })
        result = fit_binary(self.net_, seqs, Xs, y, val_mask=val_mask, settings=s, progress=progress)
        self.calibration_ = result.calibration
        self.threshold_ = best_f1_threshold(y[val_mask], self.calibration_.apply(result.val_logits))
        self.fit_result_ = result
        return self

    def _predict_arrays(self, X: pd.DataFrame, seqs: Sequences) -> np.ndarray:
        self._check_fitted()
        return self.calibration_.apply(predict_logits(self.net_, seqs, self.scaler_.transform(X)))

    # --- inference ----------------------------------------------------------------------
    def _features_at(self, events: pd.DataFrame, asof: pd.Timestamp, users: pd.Index) -> tuple[pd.DataFrame, Sequences]:
        mine = events[events["user_id"].isin(users) & (events["ts"] < asof)]
        feats = rfm_features(mine, asof, categories=self.categories_).reindex(users)
        seqs = tokenize_events(mine, self.vocab_, keys=users, max_len=self.settings.max_len) if self.use_sequence else _empty_seqs(users)
        return feats, seqs

    def predict_proba(self, events: pd.DataFrame, user_ids: Sequence[str] | None = None) -> pd.Series:
        """P(churn in the next H days) per user, as of the end of ``events`` (index user_id).

        Unknown user ids raise ``KeyError`` naming them.
        """
        self._check_fitted()
        asof = end_of_events(events)
        if user_ids is None:
            users = pd.Index(sorted(events["user_id"].unique()), name="user_id")
        else:
            users = pd.Index([str(u) for u in user_ids], name="user_id")
            events = events[events["user_id"].isin(users)]  # one pass over the table, then small work
            unknown = users.difference(pd.Index(events["user_id"].unique()))
            if len(unknown):
                raise KeyError(f"unknown user id(s): {', '.join(map(str, unknown[:5]))}")
        feats, seqs = self._features_at(events, asof, users)
        return pd.Series(self._predict_arrays(feats, seqs), index=users, name="p_churn")

    def explain(self, events: pd.DataFrame, user_id: str) -> dict[str, Any]:
        """Top factors (feature ablation), churn rule signals and the sessions behind them, as data, and
        ``reasons``: the same in words, merged and measured against the typical values (``reasons.py``)."""
        self._check_fitted()
        user_id = str(user_id)
        asof = end_of_events(events)
        mine = events[rows_of_users(events, [user_id])]
        if mine.empty:
            raise KeyError(f"unknown user id: {user_id}")
        users = pd.Index([user_id], name="user_id")
        feats, seqs = self._features_at(mine, asof, users)
        x = self.scaler_.transform(feats)[0]

        def score(batch: np.ndarray) -> np.ndarray:  # the user's own sequence beside each ablated row
            return self.calibration_.apply(predict_logits(self.net_, seqs, batch))

        raw = feats.iloc[0].to_dict()
        rules = churn_rules(raw, self.horizon_days)
        names = self.scaler_.columns
        plan = plan_reasons(glossary=self.glossary(), names=names, raw=raw, x=x, baseline=self.baseline_row(self.scaler_, self.typical_),
                            typical=self.typical_, rules=rules, context=RuleContext(events=mine))
        # one pass for the factors' rows and the reasons' (each pass reads the sequence through the GRU)
        p_all = score(np.concatenate([ablation_batch(x), plan.rows]))
        p = float(p_all[0])
        factors = ablation_factors_from(p_all[: len(names) + 1], raw, names, top_k=5)
        sequence = None
        if self.use_sequence:
            blank = Sequences(np.zeros_like(seqs.tokens), np.ones_like(seqs.lengths), users)
            p_blank = float(self.calibration_.apply(predict_logits(self.net_, blank, x[None, :]))[0])
            c = p - p_blank
            factors.append({"name": "recent_event_sequence", "value": int(seqs.lengths[0]), "direction": "raises" if c >= 0 else "lowers", "contribution": round(c, 4)})
            factors.sort(key=lambda f: -abs(f["contribution"]))
            sequence = (int(seqs.lengths[0]), p_blank)
        reasons = plan.reasons(p, p_all[len(names) + 1 :], sequence=sequence, ordering=self.reason_ordering, threshold=float(self.threshold_))
        return {
            "model": self.label,
            "user_id": user_id,
            "probability": round(p, 4),
            "threshold": round(float(self.threshold_), 4),
            "horizon_days": self.horizon_days,
            "asof": asof.isoformat(),
            "factors": factors[:6],
            "rules": rules,
            "evidence": user_evidence(mine, user_id),
            "reasons": reasons,
        }

    def glossary(self) -> Glossary:
        """The words for the RFM features, the behaviour sentence and the churn rules at this horizon."""
        return churn_glossary(self.horizon_days)

    # --- persistence --------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        spec = {
            "horizon_days": self.horizon_days,
            "n_snapshots": self.n_snapshots,
            "snapshot_step_days": self.snapshot_step_days,
            "active_days": self.active_days,
            "n_categories": self.n_categories,
            "use_sequence": self.use_sequence,
            "val_user_fraction": self.val_user_fraction,
            "settings": self.settings.to_dict(),
            "vocab": self.vocab_,
            "categories": self.categories_,
            "scaler": self.scaler_.to_dict(),
            "net": dict(self.net_._config),
            "calibration": self.calibration_.to_dict(),
            "threshold": self.threshold_,
        }
        return self.net_.state_dict(), spec

    @classmethod
    def _from_saved(cls, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> "ChurnModel":
        m = cls(
            spec["horizon_days"],
            n_snapshots=spec["n_snapshots"],
            snapshot_step_days=spec["snapshot_step_days"],
            active_days=spec["active_days"],
            n_categories=spec["n_categories"],
            use_sequence=spec["use_sequence"],
            val_user_fraction=spec.get("val_user_fraction", 0.2),
            settings=TrainSettings(**spec["settings"]),
        )
        m.vocab_ = spec["vocab"]
        m.categories_ = list(spec["categories"])
        m.scaler_ = TabularScaler.from_dict(spec["scaler"])
        m.net_ = build_net(spec["net"])
        m.net_.load_state_dict(state_dict, strict=True)
        m.net_.eval()
        m.calibration_ = Calibration(**spec["calibration"])
        m.threshold_ = float(spec["threshold"])
        return m


# --- helpers --------------------------------------------------------------------------------


def split_snapshots(
    snaps: list[Snapshot], val_user_fraction: float, *, seed: int = 0
) -> tuple[pd.DataFrame, Sequences, np.ndarray, np.ndarray]:
    """Stack training snapshots (newest first) and mark the validation rows.

    Validation = the newest snapshot of a random ``val_user_fraction`` of users; their older
    snapshots are dropped. Snapshots a week apart have overlapping label windows, so a user's
    rows are near-copies of each other: validating on users seen in training rewards
    memorising them (measured on Complete Journey: early stopping then picked nets 0.06 AUC
    worse on the test cutoff).

    Returns:
        features, sequences, labels, validation mask — aligned rows.
    """
    users = pd.Index(sorted(set().union(*(s.features.index for s in snaps))))
    X, seqs, y, val, _ = stack_snapshots(snaps, validation_users(users, val_user_fraction, seed=seed))
    return X, seqs, y, val


def validation_draw(positions: np.ndarray, n_users: int, val_user_fraction: float, *, seed: int = 0) -> np.ndarray:
    """Whether the users at ``positions`` (in the sorted list of all ``n_users`` snapshot users) validate.

    One seeded draw per user over the whole sorted list, so a group of users (a Spark group)
    gets the same verdicts as the whole table.
    """
    draws = np.random.default_rng(seed).random(n_users)
    return draws[np.asarray(positions, dtype="int64")] < val_user_fraction


def validation_users(users: pd.Index, val_user_fraction: float, *, seed: int = 0) -> pd.Index:
    """The validating users among ``users`` (sorted: every user of the training snapshots)."""
    return users[validation_draw(np.arange(len(users)), len(users), val_user_fraction, seed=seed)]


def stack_snapshots(snaps: list[Snapshot], val_users: pd.Index) -> tuple[pd.DataFrame, Sequences, np.ndarray, np.ndarray, np.ndarray]:
    """``split_snapshots``' rows for a given set of validating users, plus each row's snapshot (0 = newest).

    Validation = the newest snapshot's rows of ``val_users``; their older snapshots are dropped.
    """
    feats, seqs, ys, vals, which = [], [], [], [], []
    for i, s in enumerate(snaps):
        is_val = s.features.index.isin(val_users)
        keep = ~is_val if i else np.ones(len(is_val), dtype=bool)
        feats.append(s.features[keep])
        seqs.append(Sequences(s.seqs.tokens[keep], s.seqs.lengths[keep], s.seqs.keys[keep]))
        ys.append(s.y[keep])
        vals.append(is_val[keep] if i == 0 else np.zeros(int(keep.sum()), dtype=bool))
        which.append(np.full(int(keep.sum()), i, dtype="int64"))
    return pd.concat(feats, ignore_index=True), _stack_seqs(seqs), np.concatenate(ys), np.concatenate(vals), np.concatenate(which)


def _empty_seqs(users: pd.Index) -> Sequences:
    return Sequences(np.zeros((len(users), 1), dtype="int64"), np.ones(len(users), dtype="int64"), users)


def _stack_seqs(parts: list[Sequences]) -> Sequences:
    return Sequences(
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.lengths for p in parts]),
        pd.Index(np.concatenate([np.asarray(p.keys) for p in parts])),
    )


def churn_rules(f: dict[str, Any], horizon_days: int) -> list[dict[str, Any]]:
    """Named, explainable churn signals from a user's RFM features (value, threshold, fired)."""
    rec = float(f.get("recency_days") or 0.0)
    gap = f.get("gap_mean_days")
    gap = float(gap) if gap is not None and np.isfinite(gap) else None
    e30 = float(f.get("events_30d") or 0.0)
    e90 = float(f.get("events_90d") or 0.0)
    prior_monthly = max(e90 - e30, 0.0) / 2.0
    rules = [
        {
            "name": "never_purchased",
            "fired": not bool(f.get("has_purchase")),
            "value": int(f.get("frequency") or 0),
            "threshold": 1,
            "detail": "no purchase on record",
        },
        {
            "name": "no_purchase_within_horizon",
            "fired": bool(f.get("has_purchase")) and rec >= horizon_days,
            "value": round(rec, 1),
            "threshold": horizon_days,
            "detail": f"days since the last purchase ≥ {horizon_days}",
        },
        {
            "name": "overdue_vs_usual_gap",
            "fired": gap is not None and rec >= 2 * max(gap, 1.0),
            "value": round(rec / max(gap, 1.0), 2) if gap is not None else None,
            "threshold": 2.0,
            "detail": "days since the last purchase vs the user's usual gap between purchases",
        },
        {
            "name": "activity_dropping",
            "fired": prior_monthly >= 4 and e30 < 0.5 * prior_monthly,
            "value": round(e30 / prior_monthly, 2) if prior_monthly else None,
            "threshold": 0.5,
            "detail": "events in the last 30 days vs the monthly average of the 60 days before",
        },
    ]
    return rules


def _last_purchase(ctx: RuleContext) -> tuple[str | None, str | None, str | None]:
    """("the last on 5 Jan (session u1-s3)", session id, ISO day) of the user's latest purchase."""
    ev = ctx.events
    buys = ev[(ev["event"] == "purchase").to_numpy(dtype=bool, na_value=False)]
    if buys.empty:
        return None, None, None
    last = buys.sort_values("ts", kind="stable").iloc[-1]
    when = day_of(last["ts"])
    sid = str(last["session_id"])
    return (f"the last on {when[0]} (session {sid})" if when else None), sid, (when[1] if when else None)


@functools.cache
def churn_glossary(horizon_days: int) -> Glossary:
    """The churn model's words: RFM, the behaviour sentence, and the rules of ``churn_rules`` (what each
    looks for, when it fires, how a fired one reads) at this horizon. Cached: explain asks per call."""

    def never(rule: dict, ctx: RuleContext) -> RuleSaid:
        return RuleSaid("has never bought anything")

    def horizon(rule: dict, ctx: RuleContext) -> RuleSaid:
        return RuleSaid(f"no purchase for {show_days(rule['value'])}, past the {horizon_days}-day horizon", *_last_purchase(ctx))

    def overdue(rule: dict, ctx: RuleContext) -> RuleSaid:
        return RuleSaid(f"{show_ratio(rule['value'])} times their usual gap between purchases since the last one", *_last_purchase(ctx))

    def dropping(rule: dict, ctx: RuleContext) -> RuleSaid:
        return RuleSaid(f"activity in the past month down to {show_percent(rule['value'])} of their monthly average of the two months before")

    rules = Glossary(rules={
        "never_purchased": RuleTerm("no purchase on record", "the customer has never bought anything", "frequency", "frequency", never),
        "no_purchase_within_horizon": RuleTerm("no purchase for longer than the churn horizon", f"at least {horizon_days} days since the last purchase",
                                               "recency_days", "recency_days", horizon),
        "overdue_vs_usual_gap": RuleTerm("the next purchase is overdue against the customer's own rhythm",
                                         "days since the last purchase at least twice their usual gap between purchases",
                                         "recency_over_gap", "recency_over_gap", overdue),
        "activity_dropping": RuleTerm("activity falling off", "events in the past month under half the monthly average of the two months before (which had at least 4 a month)",
                                      "events_30d", None, dropping),
    })
    return Glossary.merge(RFM_GLOSSARY, SEQUENCE_GLOSSARY, rules, population="active customers")
