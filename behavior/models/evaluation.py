"""Evaluating a fitted model beside its baselines on the test cutoff (the model card), and scoring every user.

``fit`` only learns; ``train_model`` runs fit → ``evaluate`` → ``score_users`` → save.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from shopsight.behavior.models.baselines import cross_fitted_baselines, run_baselines
from shopsight.behavior.models.bgnbd import BGNBD, bgnbd_inputs
from shopsight.behavior.models.churn import ChurnModel, end_of_events
from shopsight.behavior.models.common import BehaviorModel, ModelError, NotFittedError, Progress, predict_logits
from shopsight.behavior.models.metrics import best_f1_threshold, binary_report
from shopsight.behavior.models.rules import evaluate_rules, rule_features

if TYPE_CHECKING:
    from shopsight.behavior.models.intent import IntentModel
    from shopsight.behavior.models.risk import RiskModel

# The intent and risk modules are imported by their own evaluators, as ``model_class`` imports
# them: a build that lacks one can still evaluate the others.


@dataclass
class Evaluation:
    """What ``evaluate`` measured on the test cutoff."""

    card: dict[str, Any]  # the model card: data window, split, metrics beside the baselines', calibration, training
    test_scores: pd.DataFrame | None = None  # churn: the test snapshot's labels and every scorer's output


def evaluate(
    model: BehaviorModel,
    events: pd.DataFrame,
    *,
    labels: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Test a fitted model at the cutoff it was fitted for, beside its baselines; ``.card`` is the model card.

    Args:
        model: a model fitted in this process (``fit`` keeps the training record the card
            reports; a loaded model's evaluation is its saved card).
        events: the events the model was fitted on; the test labels come from after its cutoff.
        labels: the ground truth given to ``fit`` (risk: ``is_fraud``; churn: ``dropout_ts``,
            reported beside the purchase-based metrics). None: the events' own labels only.
        progress: optional ``progress(stage, fraction)`` callback.

    Raises:
        NotFittedError: the model was not fitted (or was loaded, so has no training record).
    """
    model._check_fitted()
    if getattr(model, "cutoff_", None) is None:
        raise NotFittedError(
            f"the {model.name} model has no training record to evaluate: call fit(events) first "
            f"(a saved version's metrics are in its card: `shopsight models`)"
        )
    evaluator, _ = _by_name(model)
    return evaluator(model, events, labels, progress or (lambda stage, frac: None))


def score_users(model: BehaviorModel, events: pd.DataFrame, *, progress: Progress | None = None) -> pd.DataFrame:
    """Every user's scores as of the end of ``events``: the table saved beside the weights as ``scores.parquet``.

    Columns: ``user_id``, ``probability``, the model's flag at its threshold (``churn``,
    ``intent`` or ``risky``), model-specific columns (RFM values; the next category; the
    anomaly score and the rules fired), ``asof``. Works on a fitted or a loaded model.
    """
    model._check_fitted()
    report = progress or (lambda stage, frac: None)
    report("scores", 0.0)
    scores, _ = score_table(model, events)
    report("scores", 1.0)
    return scores


def score_table(
    model: BehaviorModel, events: pd.DataFrame, *, asof: pd.Timestamp | None = None, rules: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, features) of every user in ``events`` as of ``asof``: the one scoring function.

    ``score_users`` runs it on a whole table; ``behavior/scoring.py`` runs it per group of users
    (locally and in Spark executors), passing the ``asof`` of the whole table and, for risk, the
    rules' verdicts (``linked_accounts`` needs accounts outside the group). ``features`` is the
    model's input row per user (index user_id), in the scores' order.
    """
    model._check_fitted()
    _, scorer = _by_name(model)
    return scorer(model, events, end_of_events(events) if asof is None else asof, rules)


def _by_name(model: BehaviorModel) -> tuple[Callable[..., Evaluation], Callable[[Any, pd.DataFrame], pd.DataFrame]]:
    pairs = {"churn": (_evaluate_churn, _churn_scores), "intent": (_evaluate_intent, _intent_scores), "risk": (_evaluate_risk, _risk_scores),
             "recommend": (_evaluate_recommend, _recommend_scores)}
    if model.name not in pairs:
        raise ModelError(f"no evaluation for a '{model.name}' model: evaluation.py knows {', '.join(pairs)}")
    return pairs[model.name]


def _baseline_reports(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``run_baselines`` output as card entries: each baseline's test report and its training time."""
    return {k: {**v["report"], "train_seconds": round(v["train_seconds"], 3)} for k, v in runs.items()}


# --- recommend (ranking metrics, not probabilities: behavior/models/recommend.py) ------------


def _evaluate_recommend(model: Any, events: pd.DataFrame, labels: pd.DataFrame | None, report: Progress) -> Evaluation:
    from shopsight.behavior.models.recommend import evaluate_recommender

    return Evaluation(card=evaluate_recommender(model, events, report))


def _recommend_scores(model: Any, events: pd.DataFrame, asof: pd.Timestamp, rules: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from shopsight.behavior.models.recommend import recommend_scores

    return recommend_scores(model, events), pd.DataFrame(index=pd.Index([], name="user_id"))  # ranks items: no per-user inputs to report


# --- churn ----------------------------------------------------------------------------------


def _churn_fit(model: Any, s: Any) -> dict[str, Any]:
    """The churn card's account of the fit: calibration, training time and epochs, settings, features, typical values."""
    fr = model.fit_result_
    return {
        "calibration": {"method": "platt (temperature + bias) on the validation snapshot", **model.calibration_.to_dict()},
        "train_seconds": round(model.train_seconds_, 2),
        "training": {"best_epoch": fr.best_epoch, "epochs_run": fr.epochs_run, "net_seconds": round(fr.seconds, 1),
                     "note": "best_epoch 0 = the logistic warm start was not improved on validation"},
        "settings": s.to_dict(),
        "features": list(model.scaler_.columns),
        **model.typical_card(),
    }


def _churn_split(model: Any, asofs: Sequence[pd.Timestamp], C: pd.Timestamp, H: pd.Timedelta,
                 n_train: int, n_validation: int, n_test: int) -> dict[str, Any]:
    """The churn card's split: snapshots, the validation users, the population and the row counts."""
    return {
        "train_snapshots": [a.isoformat() for a in asofs[1:]],
        "validation_snapshot": asofs[0].isoformat(),
        "validation": f"newest training snapshot of {model.val_user_fraction:.0%} of users (held out of training)",
        "test_snapshot": C.isoformat(),
        "last_train_label_end": (asofs[0] + H).isoformat(),
        "population": f"users with an event in the {model.active_days} days before a snapshot" if model.active_days else "all users seen",
        "n_train": n_train, "n_validation": n_validation, "n_test": n_test,
    }


def _evaluate_churn(model: ChurnModel, events: pd.DataFrame, labels: pd.DataFrame | None, report: Progress) -> Evaluation:
    C, H, asofs = model.cutoff_, pd.Timedelta(days=model.horizon_days), model.train_asofs_
    s = model.settings
    train = model.training_set(events, asofs)  # the rows fit learned from: the baselines learn from them too
    test = model.snapshot(events[events["ts"] < C + H], C)
    p_test = model._predict_arrays(test.features, test.seqs)
    metrics = binary_report(test.y, p_test, threshold=model.threshold_)
    report("baselines", 0.0)
    base_runs = run_baselines(train.features, train.y, test.features, test.y, val_mask=train.val_mask, seed=s.seed, threads=s.threads)
    baselines = _baseline_reports(base_runs)
    # the test snapshot's labels and every scorer's output, for benchmarks and error analysis
    test_scores = pd.DataFrame(
        {"user_id": test.features.index.astype(str), "y": test.y, "model": p_test, **{k: v["proba"] for k, v in base_runs.items()}}
    )
    baselines["bgnbd"] = bgnbd_report(events[events["ts"] < C], test.features.index, C, model.horizon_days, test.y)
    test_scores["bgnbd"] = baselines["bgnbd"].pop("scores", np.nan)
    report("baselines", 1.0)
    ground_truth = None
    if isinstance(labels, dict):
        labels = labels.get("users")
    if labels is not None and "dropout_ts" in labels.columns:
        gt = labels.set_index(labels["user_id"].astype(str))["dropout_ts"].reindex(test.features.index.astype(str))
        y_true = (gt.notna() & (gt < C + H)).to_numpy().astype("int64")
        ground_truth = {
            "definition": f"true dropout before cutoff + {model.horizon_days} days",
            "model": binary_report(y_true, p_test, threshold=model.threshold_),
            "lightgbm": binary_report(y_true, base_runs["lightgbm"]["proba"], threshold=baselines["lightgbm"]["threshold"]),
        }
    card = {
        "task": f"P(no purchase in the next {model.horizon_days} days)",
        "data_window": {"first_event": events["ts"].min().isoformat(), "last_event": events["ts"].max().isoformat(),
                        "test_cutoff": C.isoformat(), "scored_asof": end_of_events(events).isoformat()},
        "split": _churn_split(model, asofs, C, H, int((~train.val_mask).sum()), int(train.val_mask.sum()), int(len(test.y))),
        "metrics": metrics,
        "baselines": baselines,
        "ground_truth": ground_truth,
        **_churn_fit(model, s),
    }
    return Evaluation(card=card, test_scores=test_scores)


def bgnbd_report(
    past: pd.DataFrame, users: pd.Index, asof: pd.Timestamp, horizon_days: int, y: np.ndarray
) -> dict[str, Any]:
    """BG/NBD fitted on purchases before ``asof``; churn score = − expected purchases in the horizon.

    Users with no purchase yet get an expected count of 0 (BG/NBD models repeat buyers only).
    """
    t = time.perf_counter()
    inp = bgnbd_inputs(past, asof)
    if len(inp) < 10:
        return {"error": "fewer than 10 buyers: BG/NBD not fitted", "n": int(len(y))}
    m = BGNBD().fit(inp["x"], inp["t_x"], inp["T"])
    exp = pd.Series(m.expected_purchases(horizon_days / 7.0, inp["x"], inp["t_x"], inp["T"]), index=inp.index)
    score = -exp.reindex(users).fillna(0.0).to_numpy()
    rep = binary_report(y, score, threshold=float(np.median(score)))
    rep.update(train_seconds=round(time.perf_counter() - t, 3), params=m.params_, score="-expected purchases in horizon")
    rep["scores"] = score  # popped by the caller (not JSON for the card)
    return rep


def _churn_scores(model: ChurnModel, events: pd.DataFrame, asof: pd.Timestamp, rules: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.Index(sorted(events["user_id"].unique()), name="user_id")
    feats, seqs = model._features_at(events, asof, users)
    p = model._predict_arrays(feats, seqs)
    return pd.DataFrame({
        "user_id": users.astype(str),
        "probability": p,
        "churn": p >= model.threshold_,
        "recency_days": feats["recency_days"].to_numpy(),
        "frequency": feats["frequency"].to_numpy(),
        "monetary": feats["monetary"].to_numpy(),
        "days_since_last_event": feats["days_since_last_event"].to_numpy(),
        "asof": asof,
    }), feats


# --- intent ---------------------------------------------------------------------------------


def _evaluate_intent(model: IntentModel, events: pd.DataFrame, labels: pd.DataFrame | None, report: Progress) -> Evaluation:
    from shopsight.behavior.models.intent import CATEGORY_EVENT_WEIGHTS, CATEGORY_HALF_LIFE_DAYS, session_feature_names

    C, H, asofs = model.cutoff_, pd.Timedelta(days=model.horizon_days), model.train_asofs_
    X_train, _, y_train, val = model.user_training_set(events, asofs)
    X_test, seq_test, y_test = model.user_snapshot(events[events["ts"] < C + H], C)
    p_test = model.user_calibration_.apply(predict_logits(model.net_, seq_test, model.user_scaler_.transform(X_test)))
    train_ex, sval, test_ex = model.session_split(events, C)
    names = session_feature_names(model.devices_)
    ps_test = model.session_calibration_.apply(
        predict_logits(model.session_net_, model._session_sequences(events, test_ex.index), model.session_scaler_.transform(test_ex))
    ) if len(test_ex) else np.zeros(0)
    card = _intent_card(
        model, report, users=(X_train, y_train, val, X_test, y_test, p_test),
        sessions=(train_ex[names].reset_index(drop=True), train_ex["purchased"].astype("int64").to_numpy(), sval,
                  test_ex[names].reset_index(drop=True), test_ex["purchased"].astype("int64").to_numpy(), ps_test),
        data_window={"first_event": events["ts"].min().isoformat(), "last_event": events["ts"].max().isoformat(),
                     "test_cutoff": C.isoformat(), "scored_asof": end_of_events(events).isoformat()},
        next_categories={
            "method": f"recency-weighted category mix (half-life {CATEGORY_HALF_LIFE_DAYS:g} days, weights {CATEGORY_EVENT_WEIGHTS})",
            **next_category_hit_rate(events, C, model.horizon_days),
        })
    return Evaluation(card=card)


def _intent_card(model: IntentModel, report: Progress, *, users: tuple, sessions: tuple, data_window: dict[str, Any],
                 next_categories: dict[str, Any]) -> dict[str, Any]:
    """The intent card from each net's rows: ``(X_train, y_train, validation mask, X_test, y_test, p_test)`` of
    the users and of the sessions (the baselines learn on the same training rows as the nets)."""
    from shopsight.behavior.models.intent import session_feature_names

    C, asofs, s = model.cutoff_, model.train_asofs_, model.settings
    X_train, y_train, val, X_test, y_test, p_test = users
    S_train, ys, sval, S_test, ys_test, ps_test = sessions
    names = session_feature_names(model.devices_)
    report("baselines", 0.0)
    user_base = run_baselines(X_train, y_train, X_test, y_test, val_mask=val, recency_sign=-1.0, seed=s.seed, threads=s.threads)
    session_base = run_baselines(
        S_train, ys, S_test, ys_test, val_mask=sval,
        recency_column="days_since_prev_purchase", recency_sign=-1.0, seed=s.seed, threads=s.threads,
    ) if len(ys_test) else {}
    session_base.pop("days_since_last_purchase", None)  # not a session-level baseline
    report("baselines", 1.0)
    ru, rs = model.user_fit_, model.session_fit_
    return {
        "task": f"user: P(purchase within {model.horizon_days} days); session: P(purchase in the session) from its events before checkout",
        "data_window": data_window,
        "split": {
            "user_train_snapshots": [a.isoformat() for a in asofs[1:]],
            "user_validation_snapshot": asofs[0].isoformat(),
            "user_test_snapshot": C.isoformat(),
            "session_train": f"sessions that ended before {C.isoformat()} (latest {int(sval.sum())} validate)",
            "session_test": f"sessions starting at or after {C.isoformat()}",
            "n_user_train": int((~val).sum()), "n_user_validation": int(val.sum()), "n_user_test": int(len(y_test)),
            "n_session_train": int((~sval).sum()), "n_session_validation": int(sval.sum()), "n_session_test": int(len(ys_test)),
        },
        "metrics": binary_report(y_test, p_test, threshold=model.user_threshold_),
        "baselines": _baseline_reports(user_base),
        "session_metrics": binary_report(ys_test, ps_test, threshold=model.session_threshold_) if len(ys_test) else None,
        "session_baselines": _baseline_reports(session_base),
        "next_categories": next_categories,
        "calibration": {"method": "platt (temperature + bias) on the validation slice",
                        "user": model.user_calibration_.to_dict(), "session": model.session_calibration_.to_dict()},
        "train_seconds": round(model.train_seconds_, 2),
        "training": {"user": {"best_epoch": ru.best_epoch, "epochs_run": ru.epochs_run, "seconds": round(ru.seconds, 1)},
                     "session": {"best_epoch": rs.best_epoch, "epochs_run": rs.epochs_run, "seconds": round(rs.seconds, 1)}},
        "settings": s.to_dict(),
        "features": {"user": list(model.user_scaler_.columns), "session": names},
        **model.typical_card(),
    }


def next_category_hit_rate(events: pd.DataFrame, asof: pd.Timestamp, horizon_days: float, k: int = 3) -> dict[str, Any]:
    """How often a buyer's purchase in [asof, asof + horizon) falls in their top-``k`` categories.

    Compares ``intent.category_affinity`` with the baseline "the k categories the user bought
    most". Population: users with events before ``asof`` who buy in the window.
    """
    from shopsight.behavior.models.intent import category_affinity

    past = events[events["ts"] < asof]
    fut = events[(events["event"] == "purchase") & (events["ts"] >= asof) & (events["ts"] < asof + pd.Timedelta(days=horizon_days))]
    bought = fut.dropna(subset=["category"]).groupby(fut["user_id"].astype(str))["category"].agg(lambda c: set(map(str, c)))
    bought = bought[bought.index.isin(past["user_id"].astype(str).unique())]
    aff = category_affinity(past, asof)
    top = aff.groupby("user_id").head(k).groupby("user_id")["category"].agg(set)
    buys = past[past["event"] == "purchase"].dropna(subset=["category"])
    most = (
        buys.groupby([buys["user_id"].astype(str), buys["category"].astype(str)]).size().rename("n").reset_index()
        .sort_values(["user_id", "n", "category"], ascending=[True, False, True], kind="stable")
        .groupby("user_id").head(k).groupby("user_id")["category"].agg(set)
    )
    hit = lambda pred: float(np.mean([bool(set(b) & set(pred.get(u, ()))) for u, b in bought.items()])) if len(bought) else None  # noqa: E731
    return {"k": k, "n_buyers": int(len(bought)), "affinity_hit_rate": hit(top), "most_bought_hit_rate": hit(most)}


def _intent_scores(model: IntentModel, events: pd.DataFrame, asof: pd.Timestamp, rules: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from shopsight.behavior.models.intent import category_affinity

    p, feats = model.predict_proba_at(events, asof)
    users = p.index
    # ages counted back from ``asof`` of the whole table, not from this group's last event: a
    # user's shares are then the same numbers whichever users are scored beside them
    top = category_affinity(events, asof).groupby("user_id").head(1).set_index("user_id")["category"]
    return pd.DataFrame({
        "user_id": users.astype(str),
        "probability": p.to_numpy(),
        "intent": p.to_numpy() >= model.user_threshold_,
        "next_category": top.reindex(users.astype(str)).to_numpy(),
        "asof": asof,
    }), feats


# --- risk -----------------------------------------------------------------------------------


def _evaluate_risk(model: RiskModel, events: pd.DataFrame, labels: pd.DataFrame | None, report: Progress) -> Evaluation:
    from shopsight.behavior.models.risk import fraud_labels

    C = model.cutoff_
    end = end_of_events(events)
    train_users, test_users = model.account_split(events, C)
    before_c = events[events["ts"] < C]
    X_train, _ = model._inputs(before_c, C, train_users, evaluate_rules(before_c, model.thresholds))
    X_train, _ = model._with_anomaly(X_train)
    rules_end = evaluate_rules(events, model.thresholds)
    X_test, seq_test = model._inputs(events, end, test_users, rules_end)  # new accounts: features from all their events
    X_test, _ = model._with_anomaly(X_test)
    has_labels = labels is not None and "is_fraud" in labels.columns
    y_train = fraud_labels(labels, train_users) if has_labels else None
    y_test = fraud_labels(labels, test_users) if has_labels else None
    first_seen = events.groupby("user_id")["ts"].min().reindex(train_users).to_numpy()

    def test_scores() -> np.ndarray:
        return model.calibration_.apply(predict_logits(model.net_, seq_test, model.scaler_.transform(X_test)))

    card = _risk_card(model, report, X_train=X_train, y_train=y_train, first_seen=first_seen, X_test=X_test, y_test=y_test,
                      test_scores=test_scores, data_window={"first_event": events["ts"].min().isoformat(), "last_event": events["ts"].max().isoformat(),
                                                           "test_cutoff": C.isoformat(), "scored_asof": end.isoformat()})
    return Evaluation(card=card)


def _risk_card(model: RiskModel, report: Progress, *, X_train: pd.DataFrame, y_train: np.ndarray | None, first_seen: np.ndarray,
               X_test: pd.DataFrame, y_test: np.ndarray | None, test_scores: Callable[[], np.ndarray], data_window: dict[str, Any]) -> dict[str, Any]:
    """The risk card from the training accounts' rows (sorted by id, as ``fit`` saw them: anomaly score included,
    their first-seen times) and the test accounts'; ``test_scores()``: the model's probabilities of the test rows."""
    from shopsight.behavior.models.risk import stratified_folds

    C, s = model.cutoff_, model.settings
    metrics: dict[str, Any] | None = None
    p_test: np.ndarray | None = None
    oof_report: dict[str, Any] | None = None
    anomaly_report: dict[str, Any] | None = None
    baselines: dict[str, Any] = {}
    oof_baselines: dict[str, Any] = {}
    if model.supervised_:
        oof_report = binary_report(y_train, model.calibration_.apply(model.oof_logits_), threshold=model.threshold_)
        if len(y_test) and 0 < y_test.sum() < len(y_test):
            p_test = test_scores()
            metrics = binary_report(y_test, p_test, threshold=model.threshold_)
            report("baselines", 0.0)
            val = _risk_baseline_validation(first_seen, y_train, seed=s.seed)
            runs = run_baselines(X_train, y_train, X_test, y_test, val_mask=val, recency_column="anomaly_score",
                                 recency_sign=1.0, seed=s.seed, threads=s.threads)
            runs.pop("days_since_last_purchase", None)  # not a fraud baseline; the anomaly score is reported below
            baselines = _baseline_reports(runs)
            # The same trees under the net's own protocol (its folds), so the comparison is like
            # for like in what each model learns from as well as in features.
            folds = stratified_folds(y_train, len(model.net_.members), s.seed)
            for name, cv in cross_fitted_baselines(X_train, y_train, folds, X_test, seed=s.seed, threads=s.threads).items():
                cv_threshold = best_f1_threshold(y_train, cv["oof"])
                baselines[f"{name}_folds"] = {**binary_report(y_test, cv["proba"], threshold=cv_threshold),
                                              "train_seconds": round(cv["train_seconds"], 3)}
                oof_baselines[f"{name}_folds"] = binary_report(y_train, cv["oof"], threshold=cv_threshold)
            anomaly_report = binary_report(y_test, X_test["anomaly_score"].to_numpy(),
                                           threshold=best_f1_threshold(y_train[val], X_train["anomaly_score"].to_numpy()[val]))
            fired_any = X_test.filter(like="_fired").max(axis=1).to_numpy()  # the rule flags among the features
            baselines["any_rule_fired"] = binary_report(y_test, fired_any, threshold=1.0)
            report("baselines", 1.0)
    elif y_test is not None and 0 < y_test.sum() < len(y_test):  # labels too few to learn from, enough to report
        anomaly_report = binary_report(y_test, X_test["anomaly_score"].to_numpy(), threshold=model.threshold_)
    decision = decision_thresholds(model, y_train, y_test, p_test)
    if model.supervised_:
        note = None
    elif model.train_frauds_ is None:
        note = "no fraud labels given: unsupervised (autoencoder) scores"
    else:
        note = f"only {model.train_frauds_} fraud accounts before the cutoff: unsupervised (autoencoder) scores"
    return {
        "task": "P(the account is fraudulent or abusive)" if model.supervised_ else "anomaly percentile (unsupervised)",
        "note": note,
        "data_window": data_window,
        "split": {
            "train": f"accounts first seen before {C.isoformat()} (features from events before it)",
            "test": f"accounts first seen at or after {C.isoformat()} (features from all their events)",
            "n_train": int(len(X_train)), "n_test": int(len(X_test)),
            "train_frauds": int(y_train.sum()) if y_train is not None else None,
            "test_frauds": int(y_test.sum()) if y_test is not None else None,
        },
        "metrics": metrics,
        "baselines": baselines,
        "anomaly_metrics": anomaly_report,
        "out_of_fold_metrics": oof_report,
        "out_of_fold_baselines": oof_baselines,
        "calibration": {"method": "platt (temperature + bias) on the out-of-fold logits of the training accounts", **model.calibration_.to_dict()},
        "threshold": model.threshold_,
        "decision_thresholds": decision,
        "train_seconds": round(model.train_seconds_, 2),
        "settings": s.to_dict(),
        "features": list(model.scaler_.columns),
        "rules": {k: str(v) for k, v in model.thresholds.__dict__.items()},
        **model.typical_card(),
    }


def decision_thresholds(model: RiskModel, y_train: np.ndarray | None, y_test: np.ndarray | None, p_test: np.ndarray | None) -> dict[str, Any]:
    """The card's review / block thresholds, chosen on the out-of-fold validation scores, with what they give on the test accounts."""
    from shopsight.behavior.models.decision import at_threshold, choose_thresholds, unsupervised_thresholds, validation_scores

    if not model.supervised_ or model.oof_logits_ is None or y_train is None:
        return unsupervised_thresholds()
    chosen = choose_thresholds(model.calibration_.apply(model.oof_logits_), y_train, review=model.threshold_,
                               source=f"out-of-fold scores of the {len(y_train)} training accounts ({int(y_train.sum())} frauds)")
    if p_test is not None and y_test is not None:
        test = validation_scores(p_test, y_test)
        chosen["test"] = {k: at_threshold(test, max(chosen[k]["threshold"], 0.01)) for k in ("review", "block")}
    return chosen


def _risk_baseline_validation(first_seen: np.ndarray, y_train: np.ndarray, *, seed: int) -> np.ndarray:
    """The baselines' validation accounts: the most recently first-seen fifth of the training accounts.

    ``first_seen``: each training account's first event time (aligned with ``y_train``). The
    baselines keep this original protocol (learn on the rest, pick trees and thresholds on
    that fifth); when the fifth or the rest holds no fraud, a seeded stratified fifth instead.
    """
    first_seen = np.asarray(first_seen)
    val = np.zeros(len(first_seen), dtype=bool)
    val[np.argsort(first_seen, kind="stable")[-max(1, len(first_seen) // 5):]] = True
    if y_train[val].sum() == 0 or y_train[~val].sum() == 0:  # too few frauds for a time split: stratify instead
        rng = np.random.default_rng(seed)
        val = rng.random(len(y_train)) < 0.2
        pos = np.flatnonzero(y_train == 1)
        val[pos] = False
        val[rng.permutation(pos)[: max(1, len(pos) // 5)]] = True
    return val


def _risk_scores(model: RiskModel, events: pd.DataFrame, asof: pd.Timestamp, rules: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.Index(sorted(events["user_id"].astype(str).unique()), name="user_id")
    if rules is None:
        rules = evaluate_rules(events, model.thresholds)
    feats, seqs = model._inputs(events, asof, users, rules)
    p, anomaly = model._probabilities(feats, seqs)
    fired = rule_features(rules).filter(like="_fired").reindex(feats.index)
    names = [c[len("rule_"):-len("_fired")] for c in fired.columns]
    fired_names = ["|".join(n for n, f in zip(names, row) if f) for row in fired.to_numpy(dtype=bool)]
    return pd.DataFrame({
        "user_id": feats.index.astype(str),
        "probability": p,
        "risky": p >= model.threshold_,
        "anomaly_score": anomaly,
        "rules_fired": fired_names,
        "asof": asof,
    }), feats.assign(anomaly_score=anomaly)


def evaluate_churn_table(model: ChurnModel, table: Any, labels: pd.DataFrame | None = None, *,
                         baseline_rows: int = 200_000) -> Evaluation:
    """``_evaluate_churn`` for a model fitted from a training table (``ChurnModel.fit_table``): the card.

    The model's test metrics are over every test row, read a batch at a time. The baselines
    (logistic regression, LightGBM, days since last purchase) learn on at most ``baseline_rows``
    training and validation rows (all of them on a table that small) and score the test rows'
    tabular features, held in memory (no sentences). BG/NBD needs every buyer's purchase history,
    which the table does not hold: it is reported as not computed.
    """
    from shopsight.behavior.models.streaming import predict_table

    C, H, asofs, s = model.cutoff_, pd.Timedelta(days=model.horizon_days), model.train_asofs_, model.settings
    users, logits, y_test = predict_table(model.net_, table, "test", model.scaler_)
    p_test = model.calibration_.apply(logits)
    metrics = binary_report(y_test, p_test, threshold=model.threshold_)
    X_train, y_train, val_mask, _ = table.frame(("validation", "train"), limit=baseline_rows)
    X_test, y_t, _, test_users = table.frame(("test",), limit=max(table.rows("test"), 1))
    if not (test_users.equals(users) and np.array_equal(y_t, y_test)):
        raise ModelError(f"the training table {table.folder} read its test rows in two orders: build it again")
    base_runs = run_baselines(X_train, y_train, X_test, y_test, val_mask=val_mask, seed=s.seed, threads=s.threads)
    baselines = _baseline_reports(base_runs)
    baselines["bgnbd"] = {"error": "not computed from a training table (it needs every buyer's purchase history)", "n": int(len(y_test))}
    ground_truth = None
    if isinstance(labels, dict):
        labels = labels.get("users")
    if labels is not None and "dropout_ts" in labels.columns:
        gt = labels.set_index(labels["user_id"].astype(str))["dropout_ts"].reindex(users.astype(str))
        y_true = (gt.notna() & (gt < C + H)).to_numpy().astype("int64")
        ground_truth = {
            "definition": f"true dropout before cutoff + {model.horizon_days} days",
            "model": binary_report(y_true, p_test, threshold=model.threshold_),
            "lightgbm": binary_report(y_true, base_runs["lightgbm"]["proba"], threshold=baselines["lightgbm"]["threshold"]),
        }
    m = table.manifest
    card = {
        "task": f"P(no purchase in the next {model.horizon_days} days)",
        "data_window": {"first_event": m["first_event"], "last_event": m["last_event"], "test_cutoff": C.isoformat(),
                        "scored_asof": m["scored_asof"]},
        "split": _churn_split(model, asofs, C, H, table.rows("train"), table.rows("validation"), table.rows("test")),
        "metrics": metrics,
        "baselines": baselines,
        "baselines_trained_on": {"rows": int(len(y_train)), "of": table.rows("train") + table.rows("validation")},
        "ground_truth": ground_truth,
        **_churn_fit(model, s),
    }
    return Evaluation(card=card)


def evaluate_table(model: BehaviorModel, tables: Any, labels: pd.DataFrame | None = None, *, baseline_rows: int = 200_000) -> Evaluation:
    """The card of a model fitted from its training table(s) (``fit_table``): churn's, intent's (``{"users", "sessions"}``) or risk's."""
    if model.name == "churn":
        return evaluate_churn_table(model, tables, labels, baseline_rows=baseline_rows)
    if model.name == "intent":
        return evaluate_intent_table(model, tables, baseline_rows=baseline_rows)
    if model.name == "risk":
        return evaluate_risk_table(model, tables)
    raise ModelError(f"the {model.name} model does not train from a training table")


def evaluate_intent_table(model: IntentModel, tables: Any, *, baseline_rows: int = 200_000) -> Evaluation:
    """``_evaluate_intent`` for a model fitted from its two training tables (``IntentModel.fit_table``).

    Each net's test metrics are over every test row, read a batch at a time; the baselines learn
    on at most ``baseline_rows`` training and validation rows of each table (all of them on
    tables that small) and score the test rows' tabular features, held in memory. The next
    categories' hit rate needs the events after the cutoff, which the tables do not hold: it is
    reported as not computed.
    """
    from shopsight.behavior.models.streaming import predict_table

    parts = []
    for t, net, scaler, calibration in ((tables["users"], model.net_, model.user_scaler_, model.user_calibration_),
                                        (tables["sessions"], model.session_net_, model.session_scaler_, model.session_calibration_)):
        ids, logits, y_test = predict_table(net, t, "test", scaler)
        X_train, y_train, val, _ = t.frame(("validation", "train"), limit=baseline_rows)
        X_test, y_t, _, test_ids = t.frame(("test",), limit=max(t.rows("test"), 1))
        if not (test_ids.equals(ids) and np.array_equal(y_t, y_test)):
            raise ModelError(f"the training table {t.folder} read its test rows in two orders: build it again")
        parts.append((X_train, y_train, val, X_test, y_test, calibration.apply(logits) if len(logits) else np.zeros(0)))
    m = tables["users"].manifest
    card = _intent_card(model, lambda stage, frac: None, users=parts[0], sessions=parts[1],
                        data_window={"first_event": m["first_event"], "last_event": m["last_event"],
                                     "test_cutoff": model.cutoff_.isoformat(), "scored_asof": m["scored_asof"]},
                        next_categories={"error": "not computed from a training table (it needs the events after the cutoff)"})
    card["baselines_trained_on"] = {name: {"rows": int(len(p[1])), "of": tables[name].rows(("train", "validation"))}
                                    for name, p in zip(("users", "sessions"), parts)}
    return Evaluation(card=card)


def evaluate_risk_table(model: RiskModel, table: Any) -> Evaluation:
    """``_evaluate_risk`` for a model fitted from its training table (``RiskModel.fit_table``).

    The test accounts' probabilities are read a batch at a time; the baselines and the anomaly
    score use every training and test account's tabular features in memory (one row per
    account), as ``fit_table``'s autoencoder does.
    """
    from shopsight.behavior.models.risk import _AnomalyInputs, _sorted_frame
    from shopsight.behavior.models.streaming import predict_table

    folds = [sp for sp in table.splits if sp != "test"]
    X_train, y_train, users = _sorted_frame(table, folds)
    seen = pd.concat([b.to_pandas() for b in table.batches(folds, ["user_id", "snapshot"])], ignore_index=True)
    first_seen = seen.set_index("user_id")["snapshot"].reindex(users).to_numpy()
    X_train, _ = model._with_anomaly(X_train)
    X_test, y_test, _, test_ids = table.frame(("test",), limit=max(table.rows("test"), 1))
    X_test, _ = model._with_anomaly(X_test)
    has_labels = bool(table.manifest.get("labels"))

    def test_scores() -> np.ndarray:
        ids, logits, _ = predict_table(model.net_, table, "test", _AnomalyInputs(model))
        if not ids.equals(test_ids):
            raise ModelError(f"the training table {table.folder} read its test rows in two orders: build it again")
        return model.calibration_.apply(logits)

    m = table.manifest
    card = _risk_card(model, lambda stage, frac: None, X_train=X_train, y_train=y_train if has_labels else None, first_seen=first_seen,
                      X_test=X_test, y_test=y_test if has_labels else None, test_scores=test_scores,
                      data_window={"first_event": m["first_event"], "last_event": m["last_event"],
                                   "test_cutoff": model.cutoff_.isoformat(), "scored_asof": m["scored_asof"]})
    return Evaluation(card=card)
