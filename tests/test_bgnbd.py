"""BG/NBD: reproduces Fader, Hardie & Lee (2005) on the packaged CDNOW sample; predictions behave."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.models.bgnbd import BGNBD, bgnbd_inputs, log_likelihood
from shopsight.behavior.models.common import NotFittedError


def _cdnow_sample() -> Path:
    spec = importlib.util.find_spec("lifetimes")  # locate its data file; never import the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI `lifetimes` (the CDNOW data files) is not installed: pip install 'shopsight[datasets]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "CDNOW_sample.txt"


def _events(ids: list[str], days: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": ids, "ts": pd.to_datetime(days, utc=True, format="mixed"), "event": "purchase"})


def test_bgnbd_reproduces_the_2005_paper_on_cdnow_sample():
    raw = pd.read_csv(_cdnow_sample(), sep=r"\s+", header=None, names=["id", "id2", "date", "cds", "usd"], dtype={"id": str, "date": str})
    events = _events(raw["id"].tolist(), pd.to_datetime(raw["date"], format="%Y%m%d").astype(str).tolist())
    inp = bgnbd_inputs(events, pd.Timestamp("1997-10-01", tz="UTC"))
    assert len(inp) == 2357

    model = BGNBD().fit(inp["x"], inp["t_x"], inp["T"])

    p = model.params_
    assert p["r"] == pytest.approx(0.243, abs=0.01)
    assert p["alpha"] == pytest.approx(4.414, abs=0.01)
    assert p["a"] == pytest.approx(0.793, abs=0.01)
    assert p["b"] == pytest.approx(2.426, abs=0.01)
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.5)


def test_inputs_count_distinct_purchase_days_in_weeks_up_to_the_last_calibration_day():
    events = _events(["a", "a", "a", "b", "c"], ["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-15", "2024-01-08", "2024-02-01"])
    inp = bgnbd_inputs(events, pd.Timestamp("2024-01-29", tz="UTC"))  # c's purchase is after: left out

    assert list(inp.index) == ["a", "b"]
    assert inp.loc["a"].tolist() == pytest.approx([1.0, 2.0, 27 / 7])  # 2 distinct days; Jan 1 -> Jan 28
    assert inp.loc["b"].tolist() == pytest.approx([0.0, 0.0, 20 / 7])


def test_expected_purchases_grow_with_time_and_p_alive_is_one_without_repeats():
    model = BGNBD()
    model.params_ = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    x, t_x, T = np.array([0.0, 3.0, 3.0]), np.array([0.0, 30.0, 5.0]), np.array([38.0, 38.0, 38.0])

    e10, e40 = model.expected_purchases(10, x, t_x, T), model.expected_purchases(40, x, t_x, T)
    alive = model.p_alive(x, t_x, T)

    assert np.all(e40 > e10) and np.all(e10 > 0)
    assert alive[0] == pytest.approx(1.0)
    assert alive[1] > alive[2]  # same purchases, but the recent buyer is more likely alive
    assert e40[1] > e40[2]


def test_log_likelihood_of_a_non_repeater_has_no_a4_term():
    params = np.array([0.5, 2.0, 0.8, 2.5])
    ll = log_likelihood(params, np.array([0.0]), np.array([0.0]), np.array([10.0]))
    from scipy.special import gammaln

    r, alpha, a, b = params
    expected = r * np.log(alpha) - r * np.log(alpha + 10.0) + (gammaln(a + b) + gammaln(b) - gammaln(b) - gammaln(a + b))
    assert ll[0] == pytest.approx(expected)


def test_unfitted_bgnbd_refuses_to_predict():
    with pytest.raises(NotFittedError, match="not fitted"):
        BGNBD().p_alive(np.array([1.0]), np.array([1.0]), np.array([2.0]))
