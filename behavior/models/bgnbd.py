"""BG/NBD (Fader, Hardie & Lee 2005): the classic repeat-purchase baseline for churn.

Implemented here because its likelihood is short and ``lifetimes`` is archived and breaks on
current pandas. Time is in weeks; a customer is summarised by (x, t_x, T): repeat purchase
days, the age of the last purchase since the first, and the age of the customer at the end of
calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

from shopsight.behavior.models.common import NotFittedError


def bgnbd_inputs(events: pd.DataFrame, asof: pd.Timestamp) -> pd.DataFrame:
    """Per-user (x, t_x, T) in weeks from purchase events strictly before ``asof``.

    x = distinct purchase days − 1; t_x = (last − first purchase day) / 7;
    T = (``asof`` − 1 day − first purchase day) / 7, i.e. measured to the last calibration day.
    Users without a purchase before ``asof`` are left out (BG/NBD starts at the first purchase).
    """
    buys = events[(events["event"] == "purchase") & (events["ts"] < asof)]
    days = buys["ts"].dt.floor("D")
    per_user = days.groupby(buys["user_id"]).agg(["min", "max", "nunique"])
    last_day = (pd.Timestamp(asof) - pd.Timedelta(seconds=1)).floor("D")
    out = pd.DataFrame(
        {
            "x": (per_user["nunique"] - 1).astype("float64"),
            "t_x": (per_user["max"] - per_user["min"]).dt.days.astype("float64") / 7.0,
            "T": (last_day - per_user["min"]).dt.days.astype("float64") / 7.0,
        },
        index=per_user.index,
    )
    out.index.name = "user_id"
    return out


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood for params (r, alpha, a, b) — eq. (6) of the paper.

    The A4 term exists only for repeat buyers; the sum with A3 is taken in log space.
    """
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + a2 + np.logaddexp(a3, a4)


@dataclass
class BGNBD:
    """BG/NBD fitted by maximum likelihood (L-BFGS-B on log parameters)."""

    penalizer: float = 0.0

    params_: dict[str, float] | None = None
    log_likelihood_: float | None = None

    def fit(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> "BGNBD":
        """Fit r, alpha, a, b to customers' (x, t_x, T) (weeks). Returns self."""
        x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
        if len(x) == 0:
            raise ValueError("BG/NBD needs at least one customer with a purchase to fit")
        scale = 10.0 / max(float(T.max()), 1e-9)  # rescale time for a well-conditioned optimum

        def nll(logp: np.ndarray) -> float:
            p = np.exp(logp)
            ll = log_likelihood(p, x, t_x * scale, T * scale).sum()
            return -(ll - self.penalizer * float(np.sum(p**2))) / len(x)

        best = None
        for start in (np.zeros(4), np.log([0.5, 1.0, 0.5, 2.0])):
            res = minimize(nll, start, method="L-BFGS-B", bounds=[(-12, 8)] * 4)
            if best is None or res.fun < best.fun:
                best = res
        r, alpha, a, b = np.exp(best.x)
        alpha /= scale  # alpha is in time units
        self.params_ = {"r": float(r), "alpha": float(alpha), "a": float(a), "b": float(b)}
        self.log_likelihood_ = float(log_likelihood(self._p(), x, t_x, T).sum())
        return self

    def _p(self) -> np.ndarray:
        if self.params_ is None:
            raise NotFittedError("BG/NBD is not fitted: call fit(x, t_x, T) first")
        p = self.params_
        return np.array([p["r"], p["alpha"], p["a"], p["b"]])

    def expected_purchases(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """E[purchases in (T, T + t] | x, t_x, T] — eq. (10) of the paper."""
        r, alpha, a, b = self._p()
        x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        num = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        den = 1 + (x > 0) * a / (b + x - 1).clip(min=1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return num / den

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """P(still active at T | x, t_x, T). 1 for customers with no repeat purchase (so useless for churn)."""
        r, alpha, a, b = self._p()
        x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
        odds = (x > 0) * a / (b + x - 1).clip(min=1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return 1.0 / (1.0 + odds)
