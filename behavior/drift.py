"""Drift of the per-user features a model was trained on: their distribution at training, kept in
the model card, against the same features on the workspace's events now (population stability index).

PSI = sum over bins of (now - then) * ln(now / then), with the bins the training data's deciles.
The usual reading, which the verdicts follow: below 0.1 stable, 0.1-0.25 a moderate shift, above
0.25 a shift large enough to retrain for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shopsight.behavior.features import user_features

# The headline per-user features every model's inputs build on (behavior.features.user_features).
DRIFT_FEATURES: tuple[str, ...] = ("recency_days", "frequency", "monetary", "n_sessions", "velocity")
BINS = 10
# Shares are floored here so an empty bin on one side does not make the index infinite.
_FLOOR = 1e-4
STABLE, MODERATE = 0.1, 0.25


def feature_profile(events: pd.DataFrame, features: tuple[str, ...] = DRIFT_FEATURES) -> dict[str, dict[str, Any]]:
    """Each feature's decile edges over the users in ``events`` and the share of users in each bin (for a card)."""
    table = user_features(events)
    out: dict[str, dict[str, Any]] = {}
    for name in features:
        values = pd.to_numeric(table[name], errors="coerce").dropna().to_numpy(dtype="float64")
        if not len(values):
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
        out[name] = {"edges": [float(e) for e in edges], "shares": _shares(values, edges).tolist(), "users": len(values)}
    return out


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin: (-inf, e1], (e1, e2], ..., (ek, inf)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(counts.sum(), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of ``actual`` shares against ``expected`` ones (same bins)."""
    e = np.clip(np.asarray(expected, dtype="float64"), _FLOOR, None)
    a = np.clip(np.asarray(actual, dtype="float64"), _FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def verdict(value: float) -> str:
    return "stable" if value < STABLE else "moderate shift" if value < MODERATE else "drift: retrain"


def drift_report(profile: dict[str, dict[str, Any]], table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """PSI and verdict per profiled feature, for the users of ``table`` (``user_features`` of today's events)."""
    out: dict[str, dict[str, Any]] = {}
    for name, p in profile.items():
        if name not in table.columns:
            continue
        values = pd.to_numeric(table[name], errors="coerce").dropna().to_numpy(dtype="float64")
        value = psi(np.asarray(p["shares"]), _shares(values, np.asarray(p["edges"], dtype="float64")))
        out[name] = {"psi": round(value, 3), "verdict": verdict(value)}
    return out
