"""Strong simple baselines printed beside every model: recency, logistic regression, LightGBM.

All of them take the same hand-made features (``behavior.features.rfm_features`` and any
model-specific extras) so a comparison with a torch model is like for like.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from shopsight.behavior.models.metrics import best_f1_threshold, binary_report

BASELINE_NAMES: tuple[str, ...] = ("days_since_last_purchase", "logistic", "lightgbm")


def _signed_log(X: np.ndarray) -> np.ndarray:
    X = np.nan_to_num(np.asarray(X, dtype="float64"), nan=0.0)
    return np.sign(X) * np.log1p(np.abs(X))


def fit_logistic(X: pd.DataFrame, y: np.ndarray, *, seed: int = 0) -> Any:
    """Logistic regression on signed-log, standardised features (missing values as 0)."""
    model = make_pipeline(
        FunctionTransformer(_signed_log), StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )
    return model.fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype="int64"))


def fit_lightgbm(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    X_val: pd.DataFrame | None = None,
    y_val: np.ndarray | None = None,
    seed: int = 0,
    threads: int = 2,
) -> Any:
    """LightGBM with early stopping on the (time-later) validation rows when given."""
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=600,
        learning_rate=0.03,
        num_leaves=15,
        min_child_samples=20,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        reg_lambda=1.0,
        random_state=seed,
        n_jobs=threads,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    kwargs: dict[str, Any] = {}
    if X_val is not None and y_val is not None and len(np.unique(y_val)) == 2:
        Xv, yv = X_val.to_numpy(dtype="float64"), np.asarray(y_val, dtype="int64")
        # LightGBM 4.7 renamed eval_set to eval_X/eval_y; older releases only know eval_set
        if "eval_X" in inspect.signature(model.fit).parameters:
            kwargs = {"eval_X": (Xv,), "eval_y": (yv,)}
        else:  # pragma: no cover - lightgbm < 4.7
            kwargs = {"eval_set": [(Xv, yv)]}
        kwargs["callbacks"] = [lgb.early_stopping(50, verbose=False)]
    return model.fit(X.to_numpy(dtype="float64"), np.asarray(y, dtype="int64"), **kwargs)


def run_baselines(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    *,
    val_mask: np.ndarray,
    recency_column: str = "recency_days",
    recency_sign: float = 1.0,
    seed: int = 0,
    threads: int = 2,
) -> dict[str, dict[str, Any]]:
    """Fit every baseline on the training rows and score the test rows.

    The models learn on the rows outside ``val_mask``; the validation rows (the most recent
    snapshot) pick LightGBM's number of trees and every model's F1 threshold — the same
    protocol the torch models follow.

    Args:
        X_train, y_train: stacked training snapshots (features, 0/1 labels).
        X_test, y_test: the test snapshot.
        val_mask: boolean mask over the training rows marking the validation snapshot.
        recency_column: the raw score of the "days since last purchase" baseline.
        recency_sign: +1 when a larger recency means a positive label (churn), −1 otherwise.
        seed, threads: for LightGBM and logistic regression.

    Returns:
        name -> {"report": binary_report on test, "train_seconds", "proba": test scores}.
    """
    tr, va = ~val_mask, val_mask
    y_train = np.asarray(y_train, dtype="int64")
    out: dict[str, dict[str, Any]] = {}
    rec = recency_sign * X_test[recency_column].to_numpy(dtype="float64")
    rec_val = recency_sign * X_train.loc[va, recency_column].to_numpy(dtype="float64")
    # A raw score, not a probability: report the ranking metrics; its threshold is picked on validation.
    out["days_since_last_purchase"] = {
        "report": binary_report(y_test, rec, threshold=best_f1_threshold(y_train[va], rec_val)),
        "train_seconds": 0.0,
        "proba": rec,
    }
    t = time.perf_counter()
    lr = fit_logistic(X_train[tr], y_train[tr], seed=seed)
    secs = time.perf_counter() - t
    thr = best_f1_threshold(y_train[va], lr.predict_proba(X_train[va].to_numpy(dtype="float64"))[:, 1])
    p = lr.predict_proba(X_test.to_numpy(dtype="float64"))[:, 1]
    out["logistic"] = {"report": binary_report(y_test, p, threshold=thr), "train_seconds": secs, "proba": p}
    t = time.perf_counter()
    gbm = fit_lightgbm(X_train[tr], y_train[tr], X_val=X_train[va], y_val=y_train[va], seed=seed, threads=threads)
    secs = time.perf_counter() - t
    thr = best_f1_threshold(y_train[va], gbm.predict_proba(X_train[va].to_numpy(dtype="float64"))[:, 1])
    p = gbm.predict_proba(X_test.to_numpy(dtype="float64"))[:, 1]
    out["lightgbm"] = {"report": binary_report(y_test, p, threshold=thr), "train_seconds": secs, "proba": p}
    return out


def cross_fitted_baselines(
    X: pd.DataFrame, y: np.ndarray, folds: np.ndarray, X_test: pd.DataFrame, *, seed: int = 0, threads: int = 2
) -> dict[str, dict[str, Any]]:
    """Logistic regression and LightGBM under a cross-fitted model's protocol: one model per fold.

    Each model learns on the rows outside fold ``k`` (LightGBM early-stops on fold ``k``); the
    test score is the mean of the fold models' probabilities, as a fold-ensemble net's is of
    its nets'.

    Returns:
        name ("logistic", "lightgbm") -> {"oof": out-of-fold probabilities [len(X)], "proba":
        test probabilities, "train_seconds"}.
    """
    y = np.asarray(y, dtype="int64")
    Xt = X_test.to_numpy(dtype="float64")
    out: dict[str, dict[str, Any]] = {}
    fitters = {
        "logistic": lambda Xa, ya, Xv, yv, k: fit_logistic(Xa, ya, seed=seed + k),
        "lightgbm": lambda Xa, ya, Xv, yv, k: fit_lightgbm(Xa, ya, X_val=Xv, y_val=yv, seed=seed + k, threads=threads),
    }
    for name, fit in fitters.items():
        oof = np.zeros(len(y))
        test = []
        t = time.perf_counter()
        for k in np.unique(folds):
            va = folds == k
            model = fit(X[~va], y[~va], X[va], y[va], int(k))
            oof[va] = model.predict_proba(X[va].to_numpy(dtype="float64"))[:, 1]
            test.append(model.predict_proba(Xt)[:, 1])
        out[name] = {"oof": oof, "proba": np.mean(test, axis=0), "train_seconds": time.perf_counter() - t}
    return out
