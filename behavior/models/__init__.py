"""The intent, churn, risk and recommend models, their baselines and evaluation, and the registry they are saved in.

``load_model(ws, name)`` imports a model's module only when asked, so importing this package
stays cheap and creates nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

MODEL_NAMES: tuple[str, ...] = ("intent", "churn", "risk")  # the per-user scoring models (explain, predict_proba)
RANKING_NAMES: tuple[str, ...] = ("recommend",)  # models that rank items for a user (their own tools)

# name -> (module, class); the modules are imported lazily by model_class().
_MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "intent": ("shopsight.behavior.models.intent", "IntentModel"),
    "churn": ("shopsight.behavior.models.churn", "ChurnModel"),
    "risk": ("shopsight.behavior.models.risk", "RiskModel"),
    "recommend": ("shopsight.behavior.models.recommend", "RecommendModel"),
}


def model_class(name: str) -> Any:
    """The model class for ``name`` (one of ``MODEL_NAMES`` or ``RANKING_NAMES``)."""
    from shopsight.behavior.models.common import ModelError

    if name not in _MODEL_CLASSES:
        raise ModelError(f"unknown model '{name}': choose one of {', '.join(_MODEL_CLASSES)}")
    module, cls = _MODEL_CLASSES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"the {name} model is not available in this build ({exc})") from exc


def available_models(*, ranking: bool = False) -> list[str]:
    """The models of ``MODEL_NAMES`` (and ``RANKING_NAMES`` with ``ranking``) whose code is present (a partial build may lack one)."""
    import importlib.util

    names = MODEL_NAMES + (RANKING_NAMES if ranking else ())
    return [n for n in names if importlib.util.find_spec(_MODEL_CLASSES[n][0]) is not None]


def load_model(ws: Any, name: str, version: str | None = None) -> Any:
    """Load a saved model (default: its latest version) from workspace ``ws``."""
    return model_class(name).load(ws, version)


def train_model(
    ws: Any,
    name: str,
    *,
    progress: Any = None,
    settings: Any = None,
    events: Any = None,
    card_extra: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Fit model ``name`` on the workspace's events, evaluate it, score every user, and save a version.

    fit (learns only) → ``evaluation.evaluate`` (the card: test metrics beside the baselines')
    → ``evaluation.score_users`` (``scores.parquet``) → save in the registry.

    Args:
        ws: the workspace.
        name: one of ``MODEL_NAMES`` or ``RANKING_NAMES``.
        progress: optional ``progress(stage, fraction)`` callback.
        settings: optional ``TrainSettings`` (seed, threads, epochs, …).
        events: the workspace's events if already loaded (saves a read when training several), or
            the events to train on instead (a sample of users drawn on Spark: ``behavior.spark.sample_users``).
        card_extra: entries added to the model card (e.g. ``training_sample``: who the model saw).
        **params: model hyperparameters (e.g. ``horizon_days``).

    Returns:
        ``{"name", "version", "train_seconds", "card"}``.

    Holds the workspace's writer lock (behavior.workspace.Workspace.writer) while it trains.
    """
    cls = model_class(name)
    with ws.writer("train"):
        return _train_locked(ws, cls, name, progress, settings, events, params, card_extra or {})


def _train_locked(ws: Any, cls: Any, name: str, progress: Any, settings: Any, events: Any, params: dict[str, Any],
                  card_extra: dict[str, Any]) -> dict[str, Any]:
    from shopsight.behavior.drift import feature_profile
    from shopsight.behavior.models.evaluation import evaluate, score_users

    if events is None:
        events = ws.load_events()
    # A model class may name the ground-truth table it uses (the demo shop writes labels/users,
    # labels/sessions, labels/orders); real data has none.
    label_table = getattr(cls, "label_table", None)
    labels = ws.load_labels(label_table) if label_table and label_table in ws.label_names() else None
    analyst = None
    if getattr(cls, "reads_analyst_labels", False):  # risk: the analysts' clicks on alerts outrank older labels
        from shopsight.behavior.decisions import analyst_user_labels, with_analyst_labels

        analyst = analyst_user_labels(ws)
        labels = with_analyst_labels(labels, analyst)
    kwargs = dict(params)
    if settings is not None:
        kwargs["settings"] = settings
    model = cls(**kwargs).fit(events, labels=labels, progress=progress)
    card = evaluate(model, events, labels=labels, progress=progress).card
    # How old the model's data is, once new batches arrive (`shopsight models` compares it with the events).
    card["data_cutoff"] = events["ts"].max().isoformat()
    card["data_batches"] = [b["id"] for b in ws.batches()] or None
    card["feature_profile"] = feature_profile(events)  # what drift is measured against
    if analyst is not None and len(analyst):  # what the analysts added to the labels, when they did
        card["analyst_labels"] = {"users": int(len(analyst)), "fraud": int(analyst["is_fraud"].sum()),
                                  "false_alarm": int((~analyst["is_fraud"].astype(bool)).sum())}
    card.update(card_extra)
    scores = score_users(model, events, progress=progress)
    version = model.save(ws, card=card, scores=scores)
    return {"name": name, "version": version, "train_seconds": card.get("train_seconds"), "card": card}


def train_from_table(
    ws: Any,
    name: str,
    table: Any,
    *,
    progress: Any = None,
    settings: Any = None,
    card_extra: dict[str, Any] | None = None,
    buffer_rows: int | None = None,
    **params: Any,
) -> dict[str, Any]:
    """``train_model`` from a training table in Parquet shards (``behavior.spark.build_training_table``), streaming.

    fit (``fit_table``) → ``evaluation.evaluate_churn_table`` → save. No ``scores.parquet`` is
    written (the table holds snapshots, not the latest events): run ``shopsight score`` after it.
    Only churn trains from a table so far.

    Returns:
        ``{"name", "version", "train_seconds", "card"}``; the card's ``training_table`` says where,
        how many rows per split and how much the reader held at once.
    """
    from shopsight.behavior.models.common import ModelError
    from shopsight.behavior.models.evaluation import evaluate_churn_table
    from shopsight.behavior.models.streaming import TrainingTable

    if name != "churn":
        raise ModelError(f"only the churn model trains from a training table; train {name} from events")
    if not isinstance(table, TrainingTable):
        table = TrainingTable.open(table)
    cls = model_class(name)
    with ws.writer("train"):
        label_table = getattr(cls, "label_table", None)
        labels = ws.load_labels(label_table) if label_table and label_table in ws.label_names() else None
        model = cls(**params, **({"settings": settings} if settings is not None else {}))
        model.fit_table(table, progress=progress, buffer_rows=buffer_rows)
        card = evaluate_churn_table(model, table, labels).card
        m = table.manifest
        card["data_cutoff"] = m["last_event"]
        card["data_batches"] = [b["id"] for b in ws.batches()] or None
        card["feature_profile"] = None  # drift profiles come from events; a table holds snapshots
        card["training_table"] = {"folder": str(table.folder), "rows": dict(m["rows"]), "users": m["users"],
                                  "source": m["source"], "engine": m["engine"], "cutoff": m["cutoff"],
                                  "train_asofs": m["train_asofs"], "streaming": model.stream_record_.to_card()}
        card.update(card_extra or {})
        version = model.save(ws, card=card, scores=None)
    return {"name": name, "version": version, "train_seconds": card.get("train_seconds"), "card": card}


def metric_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a model card's metrics and baselines into table rows: who, task, the headline metrics.

    Reads ``metrics``/``baselines`` and any ``<task>_metrics``/``<task>_baselines`` pair (e.g.
    the intent card's ``session_metrics``); inside them every dict holding ``roc_auc`` is one
    row, named by its path, so nested layouts work too.
    """
    keys = ("roc_auc", "pr_auc", "brier", "ece", "f1", "recall", "base_rate", "n", "train_seconds")
    model_name = f"{card.get('name', 'model')}@{card.get('version', 'unsaved')}"
    rows: list[dict[str, Any]] = []

    def walk(obj: Any, path: list[str], who: str | None) -> None:
        if not isinstance(obj, dict):
            return
        if "roc_auc" in obj:
            name = who or (path[-1] if path else "baseline")
            task = "/".join(path if who else path[:-1]) or "test"
            rows.append({"who": name, "task": task, **{k: obj.get(k) for k in keys}})
            return
        for k, v in obj.items():
            walk(v, path + [str(k)], who)

    for key in card:
        if key == "metrics" or key.endswith("_metrics"):
            prefix = key[: -len("_metrics")] if key != "metrics" else ""
            start = len(rows)
            walk(card[key], [prefix] if prefix else [], model_name)
            for r in rows[start:]:  # the model's own rows carry the card's training time
                if r["train_seconds"] is None:
                    r["train_seconds"] = card.get("train_seconds")
            walk(card.get(f"{prefix}_baselines" if prefix else "baselines", {}), [prefix] if prefix else [], None)
    return rows


def ranking_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A ranking model's card (``recommend``) as table rows: who, HR@10, NDCG@10, coverage, n, train seconds.

    Empty for a card without ranking metrics (the scoring models: see ``metric_rows``).
    """
    keys = ("hr_at_10", "ndcg_at_10", "coverage", "n")
    if "hr_at_10" not in (card.get("metrics") or {}):
        return []
    rows = [{"who": f"{card.get('name', 'model')}@{card.get('version', 'unsaved')}", **{k: card["metrics"].get(k) for k in keys},
             "train_seconds": card.get("train_seconds")}]
    rows += [{"who": name, **{k: rep.get(k) for k in keys}, "train_seconds": None} for name, rep in (card.get("baselines") or {}).items()]
    return rows
