"""Evaluation apart from learning: ``fit`` only learns; ``evaluate`` and ``score_users`` give the card and the scores ``train_model`` saves."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.models import MODEL_NAMES, metric_rows, model_class, train_model
from shopsight.behavior.models.common import BehaviorModel, NotFittedError, TrainSettings
from shopsight.behavior.models.evaluation import Evaluation, evaluate, score_users
from shopsight.behavior.synthetic import write_shop
from shopsight.behavior.workspace import Workspace

# No time limit: two fits of the same data must stop at the same epoch however busy the machine is.
SETTINGS = TrainSettings(epochs=3, patience=2, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=1e6)
PARAMS: dict[str, dict[str, Any]] = {
    "churn": {"horizon_days": 14, "n_snapshots": 3},
    "intent": {"n_snapshots": 3, "max_train_sessions": 2000, "session_max_len": 8},
    "risk": {"ae_epochs": 10, "n_folds": 3},
}
# Wall-clock values (and what the registry adds on saving): never equal between two runs.
NOT_COMPARED = {"train_seconds", "seconds", "net_seconds", "created", "weights_sha256", "name", "version",
                "data_cutoff", "data_batches", "feature_profile"}


@pytest.fixture(scope="module")
def shop_ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("evaluation") / "ws")
    write_shop(ws.root, users=300, days=75, seed=11)  # 4 fraud accounts before the risk cutoff, 3 after
    return ws


@pytest.fixture(scope="module")
def events(shop_ws: Workspace) -> pd.DataFrame:
    return shop_ws.load_events()


def _labels(ws: Workspace, name: str) -> pd.DataFrame | None:
    table = getattr(model_class(name), "label_table", None)  # as train_model picks them
    return ws.load_labels(table) if table and table in ws.label_names() else None


def _spy_on_baselines(mp: pytest.MonkeyPatch, calls: list[str]) -> None:
    """Record every baseline fitted (logistic regression, LightGBM, BG/NBD), whoever imported it how."""
    import lightgbm

    from shopsight.behavior.models import baselines
    from shopsight.behavior.models.bgnbd import BGNBD

    real_lgbm, real_logistic, real_bgnbd_fit = lightgbm.LGBMClassifier, baselines.fit_logistic, BGNBD.fit

    def lgbm(*args: Any, **kwargs: Any) -> Any:
        calls.append("lightgbm")
        return real_lgbm(*args, **kwargs)

    def logistic(*args: Any, **kwargs: Any) -> Any:
        calls.append("logistic")
        return real_logistic(*args, **kwargs)

    def bgnbd_fit(self: BGNBD, *args: Any, **kwargs: Any) -> BGNBD:
        calls.append("bgnbd")
        return real_bgnbd_fit(self, *args, **kwargs)

    mp.setattr(lightgbm, "LGBMClassifier", lgbm)
    mp.setattr(baselines, "fit_logistic", logistic)
    mp.setattr(BGNBD, "fit", bgnbd_fit)


@dataclass
class ByHand:
    model: BehaviorModel
    fit_calls: list[str]  # baselines fitted during fit
    evaluate_calls: list[str]  # baselines fitted during evaluate
    evaluation: Evaluation
    scores: pd.DataFrame


@pytest.fixture(scope="module")
def by_hand(shop_ws: Workspace, events: pd.DataFrame) -> Callable[[str], ByHand]:
    """fit, then evaluate, then score_users, called one by one (once per model name)."""
    done: dict[str, ByHand] = {}

    def get(name: str) -> ByHand:
        if name not in done:
            labels = _labels(shop_ws, name)
            calls: list[str] = []
            with pytest.MonkeyPatch.context() as mp:
                _spy_on_baselines(mp, calls)
                model = model_class(name)(settings=SETTINGS, **PARAMS[name]).fit(events, labels=labels)
                fit_calls = list(calls)
                evaluation = evaluate(model, events, labels=labels)
            done[name] = ByHand(model, fit_calls, calls[len(fit_calls):], evaluation, score_users(model, events))
        return done[name]

    return get


def _comparable(card: dict[str, Any]) -> str:
    """The card as saved (JSON), without its wall-clock values."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in NOT_COMPARED}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return json.dumps(strip(json.loads(json.dumps(card, default=str))), sort_keys=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_learns_without_fitting_a_baseline_or_writing_a_card(by_hand, name):
    done = by_hand(name)
    assert done.fit_calls == []
    assert {"logistic", "lightgbm"} <= set(done.evaluate_calls)  # the spies do see the baselines evaluate fits
    if name == "churn":
        assert "bgnbd" in done.evaluate_calls
    assert not any(hasattr(done.model, a) for a in ("card_", "scores_", "test_scores_"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_evaluate_reports_the_model_beside_its_baselines_at_its_cutoff(by_hand, name):
    done = by_hand(name)
    card = done.evaluation.card
    rows = metric_rows({**card, "name": name, "version": "v0"})
    own = [r for r in rows if r["who"] == f"{name}@v0"]
    assert own and all(0.0 <= r["roc_auc"] <= 1.0 for r in own if r["roc_auc"] is not None)
    assert {"logistic", "lightgbm"} <= {r["who"] for r in rows}
    assert card["data_window"]["test_cutoff"] == done.model.cutoff_.isoformat()
    assert card["train_seconds"] == round(done.model.train_seconds_, 2)
    json.dumps(card, default=str)  # the card is saved as JSON


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_users_gives_every_user_the_probability_predict_proba_gives(by_hand, events, name):
    done = by_hand(name)
    p = done.model.predict_proba(events)
    scores = done.scores
    assert list(scores["user_id"]) == sorted(events["user_id"].astype(str).unique())
    np.testing.assert_allclose(scores["probability"].to_numpy(), p.loc[scores["user_id"]].to_numpy(), rtol=0, atol=1e-12)
    assert (scores["asof"] == events["ts"].max().floor("D") + pd.Timedelta(days=1)).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_model_saves_what_fit_evaluate_and_score_users_give_by_hand(by_hand, shop_ws, events, tmp_path, name):
    done = by_hand(name)
    result = train_model(shop_ws, name, settings=SETTINGS, events=events, **PARAMS[name])
    folder = shop_ws.models_dir / name / result["version"]

    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "scores.parquet", "spec.json", "weights.safetensors"]
    saved_card = json.loads((folder / "card.json").read_text())
    # train_model adds how fresh the data was (behavior/drift.py), which evaluate() does not know
    assert saved_card["data_cutoff"] == events["ts"].max().isoformat() and saved_card["feature_profile"]
    assert _comparable(saved_card) == _comparable(done.evaluation.card)
    assert _comparable(result["card"]) == _comparable(done.evaluation.card)
    done.scores.to_parquet(tmp_path / "by_hand.parquet", index=False)  # the same round trip as the saved table
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "scores.parquet"), pd.read_parquet(tmp_path / "by_hand.parquet"), check_exact=True)


def test_evaluate_needs_the_training_record_of_a_fit_and_score_users_works_on_a_loaded_model(by_hand, events, workspace):
    with pytest.raises(NotFittedError, match="shopsight train churn"):
        evaluate(model_class("churn")(), events)
    done = by_hand("churn")
    done.model.save(workspace)
    loaded = model_class("churn").load(workspace)
    with pytest.raises(NotFittedError, match="no training record"):
        evaluate(loaded, events)
    pd.testing.assert_frame_equal(score_users(loaded, events), done.scores, check_exact=False, rtol=0, atol=1e-9)


def test_registry_imports_none_of_the_models_built_on_it():
    # A fresh interpreter: in this one the models are imported already.
    code = "import sys, shopsight.behavior.models.registry; print(sorted(m for m in sys.modules if m.startswith('shopsight.behavior.models.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "['shopsight.behavior.models.registry']"
