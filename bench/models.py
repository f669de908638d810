"""Models benchmark: every torch model against its baselines, with training time, on three data sets.

Protocols are fixed in /work/shared/BENCHMARKS.md:

- ``demo``: the synthetic shop (ground truth known); each model's own time-based split, on
  several shops (seeds; 7 is ``shopsight demo``'s) and their mean: one 5,000-user shop has
  only 14–36 fraud accounts in its test window, so a single shop's risk AUC swings by ±0.05.
- ``cdnow``: full CDNOW (23,570 customers); calibration weeks 1–39, churn = no purchase in
  weeks 40–78. Learned models use customer-level 5-fold cross-validation at the week-39
  snapshot (out-of-fold predictions pooled); BG/NBD scores -E[holdout purchases].
- ``completejourney``: churn_30 and buy_7 at cutoffs 2017-07-31, 09-30, 11-30; training
  snapshots at C − H − 7k, k = 0..3.

    python bench/models.py                                   # everything
    python bench/models.py --datasets cdnow --models churn   # one part
    python bench/models.py --demo-users 1000 --demo-seeds 7  # a quicker demo shop, one seed

Prints a table and writes ``bench/results/models.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Run as a script (`python bench/models.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, print_table, write_result  # noqa: E402

DATASETS = ("demo", "cdnow", "completejourney")
MODELS = ("churn", "intent", "risk")
CJ_CUTOFFS = ("2017-07-31", "2017-09-30", "2017-11-30")
CDNOW_CAL_END = pd.Timestamp("1997-10-01", tz="UTC")  # first day after calibration (week 39)
CDNOW_HOLDOUT_DAYS = (pd.Timestamp("1998-07-01", tz="UTC") - CDNOW_CAL_END).days  # weeks 40–78
METRICS = ("roc_auc", "pr_auc", "brier", "base_rate", "n")


def _row(dataset: str, task: str, who: str, report: dict[str, Any], train_s: float | None, **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset, "task": task, "who": who, **{k: report.get(k) for k in METRICS}, "train_s": train_s, **extra}


def _rows_from_card(dataset: str, card: dict[str, Any], name: str, seconds: float, cutoff: str = "") -> list[dict[str, Any]]:
    from shopsight.behavior.models import metric_rows

    out = []
    for r in metric_rows({**card, "name": name, "version": "bench"}):
        own = r["who"].startswith(f"{name}@")
        task = name if r["task"] == "test" else f"{name}/{r['task']}"
        out.append(_row(dataset, task, name if own else r["who"], r, round(seconds, 1) if own else r.get("train_seconds"), cutoff=cutoff))
    return out


# --- data sets as canonical purchase events ----------------------------------------------------


def cdnow_events() -> pd.DataFrame:
    """CDNOW master lines collapsed to one purchase event per customer per calendar day.

    quantity = the day's CDs, price = the day's dollars per CD, so price × quantity is the
    day's spend (every master line has at least one CD).
    """
    from shopsight.behavior.adapters.cdnow import cdnow_transactions

    tx = cdnow_transactions(sample=False)
    day = tx.groupby(["customer_id", "date"], sort=True).agg(value=("value", "sum"), cds=("quantity", "sum")).reset_index()
    cds = day["cds"].clip(lower=1).astype("int64")
    uid = day["customer_id"].astype(str)
    return pd.DataFrame({
        "user_id": uid,
        "ts": pd.to_datetime(day["date"]).dt.tz_localize("UTC"),
        "event": "purchase",
        "item_id": pd.NA,
        "category": pd.array([pd.NA] * len(day), dtype="string"),
        "price": (day["value"] / cds).astype("float64"),
        "quantity": cds,
        "session_id": uid + "-" + day["date"].dt.strftime("%Y%m%d"),
    })


def completejourney_events() -> pd.DataFrame:
    """Complete Journey baskets as purchase events: basket day, spend, and its top department."""
    from shopsight.behavior.adapters.completejourney import completejourney_transactions

    tx = completejourney_transactions()
    baskets = tx.groupby("basket_id", sort=False).agg(household_id=("household_id", "first"), day=("day", "min"), spend=("sales_value", "sum"))
    dept = (
        tx.dropna(subset=["department"]).groupby(["basket_id", "department"])["sales_value"].sum()
        .reset_index().sort_values(["basket_id", "sales_value"], ascending=[True, False]).drop_duplicates("basket_id")
        .set_index("basket_id")["department"]
    )
    baskets["department"] = dept.reindex(baskets.index)
    baskets = baskets.reset_index()
    return pd.DataFrame({
        "user_id": baskets["household_id"].astype(str),
        "ts": pd.to_datetime(baskets["day"]).dt.tz_localize("UTC"),
        "event": "purchase",
        "item_id": pd.NA,
        "category": baskets["department"].astype("string"),
        "price": baskets["spend"].astype("float64"),
        "quantity": 1,
        "session_id": baskets["basket_id"].astype(str),
    }).sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)


# --- benchmarks ---------------------------------------------------------------------------------


def bench_demo(models: list[str], users: int, seeds: list[int]) -> list[dict[str, Any]]:
    """Each model on synthetic shops (one per seed): its own time split, baselines, ground truth; the mean over shops."""
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        rows += _bench_demo_shop(models, users, seed, f"demo ({users} users, seed {seed})")
    if len(seeds) > 1:
        rows += _mean_rows(rows, f"demo ({users} users, mean of {len(seeds)} seeds)", over="dataset")
    return rows


def _bench_demo_shop(models: list[str], users: int, seed: int, dataset: str) -> list[dict[str, Any]]:
    from shopsight.behavior.models import available_models, model_class
    from shopsight.behavior.models.evaluation import evaluate
    from shopsight.behavior.synthetic import generate_shop

    shop = generate_shop(users=users, days=120, seed=seed)
    rows: list[dict[str, Any]] = []
    for name in models:
        if name not in available_models():
            rows.append({"dataset": dataset, "task": name, "who": name, "error": "model code not present"})
            continue
        cls = model_class(name)
        table = getattr(cls, "label_table", None)
        labels = shop.labels.get(table) if table else None
        try:
            t = time.perf_counter()
            model = cls().fit(shop.events, labels=labels)
            seconds = time.perf_counter() - t
            card = evaluate(model, shop.events, labels=labels).card
        except Exception as exc:  # a benchmark reports a failing model and goes on with the rest
            traceback.print_exc()
            rows.append({"dataset": dataset, "task": name, "who": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows += _rows_from_card(dataset, card, name, seconds)
        gt = card.get("ground_truth") or {}
        for who, rep in gt.items():
            if isinstance(rep, dict) and "roc_auc" in rep:
                rows.append(_row(dataset, f"{name} vs true dropout", name if who == "model" else who, rep, None))
    return rows


def _take(seqs: Any, idx: np.ndarray) -> Any:
    from shopsight.behavior.models.common import Sequences

    return Sequences(seqs.tokens[idx], seqs.lengths[idx], pd.RangeIndex(len(idx)))


def bench_cdnow(folds: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """CDNOW churn (no purchase in weeks 40–78): 5-fold CV at week 39 for the learned models; BG/NBD."""
    from sklearn.model_selection import StratifiedKFold

    from shopsight.behavior.features import rfm_features
    from shopsight.behavior.models.baselines import run_baselines
    from shopsight.behavior.models.bgnbd import BGNBD, bgnbd_inputs
    from shopsight.behavior.models.churn import ChurnModel, churn_labels
    from shopsight.behavior.models.common import TrainSettings, fit_vocab, tokenize_events
    from shopsight.behavior.models.metrics import binary_report

    events = cdnow_events()
    cal = events[events["ts"] < CDNOW_CAL_END]
    users = pd.Index(sorted(events["user_id"].unique()), name="user_id")
    y = churn_labels(events, CDNOW_CAL_END, CDNOW_HOLDOUT_DAYS, users)
    X = rfm_features(cal, CDNOW_CAL_END).reindex(users)
    vocab = fit_vocab(cal)
    settings = TrainSettings(max_len=16, seed=seed, epochs=30, patience=4, batch_size=512)
    seqs = tokenize_events(cal, vocab, keys=users, max_len=settings.max_len)

    t = time.perf_counter()
    inp = bgnbd_inputs(cal, CDNOW_CAL_END).reindex(users)
    bg = BGNBD().fit(inp["x"], inp["t_x"], inp["T"])
    bg_score = -bg.expected_purchases(CDNOW_HOLDOUT_DAYS / 7.0, inp["x"], inp["t_x"], inp["T"])
    bg_alive = bg.p_alive(inp["x"], inp["t_x"], inp["T"])
    bg_s = time.perf_counter() - t

    oof = {k: np.zeros(len(y)) for k in ("churn", "logistic", "lightgbm", "days_since_last_purchase")}
    seconds = {k: 0.0 for k in oof}
    rng = np.random.default_rng(seed)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        val_mask = rng.random(len(tr)) < 0.15  # no time order inside one snapshot: a random slice validates
        Xtr, Xte = X.iloc[tr].reset_index(drop=True), X.iloc[te].reset_index(drop=True)
        t = time.perf_counter()
        model = ChurnModel(horizon_days=CDNOW_HOLDOUT_DAYS, active_days=None, settings=settings)
        model.vocab_, model.categories_ = vocab, []
        model._fit_arrays(Xtr, _take(seqs, tr), y[tr], val_mask)
        oof["churn"][te] = model._predict_arrays(Xte, _take(seqs, te))
        seconds["churn"] += time.perf_counter() - t
        for k, v in run_baselines(Xtr, y[tr], Xte, y[te], val_mask=val_mask, seed=seed).items():
            oof[k][te] = v["proba"]
            seconds[k] += v["train_seconds"]
    rows = []
    task = f"churn: no purchase weeks 40-78 ({folds}-fold CV at week 39)"
    for k, p in oof.items():
        rows.append(_row("cdnow", task, k, binary_report(y, p, threshold=0.5 if k != "days_since_last_purchase" else float(np.median(p))), round(seconds[k], 1)))
    rows.append(_row("cdnow", task, "bgnbd (-expected purchases)", binary_report(y, bg_score, threshold=float(np.median(bg_score))), round(bg_s, 1), params=bg.params_))
    rows.append(_row("cdnow", task, "bgnbd P(alive) (not a churn score)", binary_report(y, 1 - bg_alive, threshold=0.5), None))
    return rows


def bench_completejourney(models: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """Complete Journey churn_30 and buy_7 at three cutoffs; the mean over cutoffs is added per model."""
    from shopsight.behavior.models.churn import ChurnModel
    from shopsight.behavior.models.common import TrainSettings
    from shopsight.behavior.models.evaluation import evaluate
    from shopsight.behavior.models.metrics import binary_report

    events = completejourney_events()
    rows: list[dict[str, Any]] = []
    for c in CJ_CUTOFFS:
        asof = pd.Timestamp(c, tz="UTC") + pd.Timedelta(days=1)  # features use baskets dated <= C
        if "churn" in models:
            t = time.perf_counter()
            m = ChurnModel(horizon_days=30, n_snapshots=4, snapshot_step_days=7, active_days=90, settings=TrainSettings(seed=seed))
            m.fit(events, cutoff=asof)
            seconds = time.perf_counter() - t
            rows += _rows_from_card("completejourney", evaluate(m, events).card, "churn_30", seconds, cutoff=c)
        if "intent" in models:
            # IntentModel also trains a session model and refuses data without browsing sessions
            # (CJ has baskets only), so buy_7 is measured with the churn machinery at H = 7:
            # buy_7 = 1 - churn_7, scored as 1 - P(churn_7); population: any basket <= C.
            t = time.perf_counter()
            m7 = ChurnModel(horizon_days=7, n_snapshots=4, snapshot_step_days=7, active_days=None, settings=TrainSettings(seed=seed))
            m7.fit(events, cutoff=asof)
            seconds = round(time.perf_counter() - t, 1)
            ts = evaluate(m7, events).test_scores
            y_buy = 1 - ts["y"].to_numpy()
            for who in ("model", "days_since_last_purchase", "logistic", "lightgbm", "bgnbd"):
                score = -ts[who].to_numpy() if who in ("days_since_last_purchase", "bgnbd") else 1 - ts[who].to_numpy()
                rep = binary_report(y_buy, score, threshold=float(np.median(score)))
                if who in ("days_since_last_purchase", "bgnbd"):
                    rep["brier"] = None  # raw scores, not probabilities
                rows.append(_row("completejourney", "buy_7 (churn net, H=7)", "churn_7 net" if who == "model" else who, rep,
                                 seconds if who == "model" else None, cutoff=c))
    return rows + _mean_rows(rows, "completejourney", over="cutoff")


def _mean_rows(rows: list[dict[str, Any]], dataset: str, *, over: str) -> list[dict[str, Any]]:
    """One row per (task, who): the mean of its rows across the values of ``over`` (cutoffs, or shops).

    Metrics and training seconds are means; ``n`` is the total.

    A (task, who) missing from some of them (a model that failed there) gets no mean row: a
    mean over fewer shops or cutoffs than the others would not compare.
    """
    df = pd.DataFrame([r for r in rows if "error" not in r and r.get(over)])
    if df.empty:
        return []
    n_parts = df[over].nunique()
    out = []
    for (task, who), g in df.groupby(["task", "who"], sort=False):
        if g[over].nunique() < n_parts:
            continue
        mean = {k: (float(g[k].astype(float).mean()) if g[k].notna().all() else None) for k in ("roc_auc", "pr_auc", "brier", "base_rate")}
        out.append({"dataset": dataset, "task": task, "who": who, **mean, "n": int(g["n"].sum()),
                    "train_s": round(float(g["train_s"].astype(float).mean()), 1) if g["train_s"].notna().all() else None,
                    "cutoff": f"mean of {n_parts}"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--demo-users", type=int, default=5000)
    parser.add_argument("--demo-seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11],
                        help="one synthetic shop per seed (7 is `shopsight demo`'s), and their mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="models", help="result name: bench/results/<out>.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # measured fastest on the shared 2-core machine
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    if "demo" in args.datasets:
        rows += bench_demo(args.models, args.demo_users, args.demo_seeds)
    if "cdnow" in args.datasets and "churn" in args.models:
        rows += bench_cdnow(seed=args.seed)
    if "completejourney" in args.datasets:
        rows += bench_completejourney(args.models, seed=args.seed)
    shown = [
        {**{k: r.get(k) for k in ("dataset", "task", "cutoff", "who")},
         **{k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k)) for k in ("roc_auc", "pr_auc", "brier", "base_rate")},
         "n": r.get("n"), "train_s": r.get("train_s"), "error": r.get("error", "")}
        for r in rows
    ]
    print_table("Models vs baselines (ROC-AUC, PR-AUC, Brier; train seconds on this machine)", shown, console=bench_console())
    path = write_result(args.out, {"args": vars(args), "rows": rows, "seconds": round(time.perf_counter() - started, 1)})
    bench_console().print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
