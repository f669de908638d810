"""Binary classification metrics every model card and benchmark reports, in one place."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, *, bins: int = 10) -> float:
    """ECE with ``bins`` equal-width probability bins: sum over bins of share × |mean(p) − mean(y)|."""
    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(p, dtype="float64")
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype("int64"), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(ece)


def best_f1_threshold(y_true: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold that maximises F1 on these data (pick it on validation, apply on test)."""
    y = np.asarray(y_true, dtype="int64")
    p = np.asarray(p, dtype="float64")
    if len(y) == 0 or y.sum() == 0:
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    # only cut where the score changes, so tied scores fall on the same side
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    f1 = np.where(last_of_tie, 2 * tp / (tp + fp + y.sum()), -1.0)
    return float(ps[int(np.argmax(f1))])


def binary_report(y_true: Any, p: Any, threshold: float | None = None) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, Brier, ECE, and F1 / recall / precision at a threshold.

    Args:
        y_true: 0/1 labels.
        p: predicted probabilities (or any score for the ranking metrics; Brier and ECE then
            mean little).
        threshold: predict positive when ``p >= threshold``. None: the F1-best threshold on
            these data (optimistic; ``threshold_source`` says so).

    Returns:
        A JSON-able dict: roc_auc, pr_auc, brier, ece, f1, recall, precision, threshold,
        threshold_source, base_rate, n. AUCs are None when only one class is present.
    """
    y = np.asarray(y_true, dtype="int64")
    p = np.asarray(p, dtype="float64")
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in shape: {y.shape} vs {p.shape}")
    source = "given"
    if threshold is None:
        threshold, source = best_f1_threshold(y, p), "best_f1_on_these_data"
    both = len(np.unique(y)) == 2
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    in_unit = bool(len(p)) and float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, p)) if both else None,
        "brier": float(brier_score_loss(y, p)) if in_unit and len(y) else None,
        "ece": expected_calibration_error(y, p) if in_unit else None,
        "f1": float(f1),
        "recall": float(recall),
        "precision": float(precision),
        "threshold": float(threshold),
        "threshold_source": source,
        "base_rate": float(y.mean()) if len(y) else None,
        "n": int(len(y)),
    }
