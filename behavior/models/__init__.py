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
    labels, analyst = training_labels(ws, cls)
    kwargs = dict(params)
    if settings is not None:
        kwargs["settings"] = settings
    model = cls(**kwargs).fit(events, labels=labels, progress=progress)
    card = evaluate(model, events, labels=labels, progress=progress).card
    # How old the model's data is, once new batches arrive (`shopsight models` compares it with the events).
    card["data_cutoff"] = events["ts"].max().isoformat()
    card["data_batches"] = [b["id"] for b in ws.batches()] or None
    card["feature_profile"] = feature_profile(events)  # what drift is measured against
    card.update(_analyst_card(analyst))
    card.update(card_extra)
    scores = score_users(model, events, progress=progress)
    version = model.save(ws, card=card, scores=scores)
    return {"name": name, "version": version, "train_seconds": card.get("train_seconds"), "card": card}


def training_labels(ws: Any, cls: Any) -> tuple[Any, Any]:
    """(the ground truth model class ``cls`` learns from, or None; the analysts' labels folded into it, or None).

    A model class may name the ground-truth table it uses (the demo shop writes labels/users,
    labels/sessions, labels/orders); real data has none. Risk also reads the analysts' clicks on
    alerts, which outrank older labels.
    """
    label_table = getattr(cls, "label_table", None)
    labels = ws.load_labels(label_table) if label_table and label_table in ws.label_names() else None
    analyst = None
    if getattr(cls, "reads_analyst_labels", False):
        from shopsight.behavior.decisions import analyst_user_labels, with_analyst_labels

        analyst = analyst_user_labels(ws)
        labels = with_analyst_labels(labels, analyst)
    return labels, analyst


def _analyst_card(analyst: Any) -> dict[str, Any]:
    """What the analysts added to the labels, when they did (the card's ``analyst_labels``)."""
    if analyst is None or not len(analyst):
        return {}
    return {"analyst_labels": {"users": int(len(analyst)), "fraud": int(analyst["is_fraud"].sum()),
                               "false_alarm": int((~analyst["is_fraud"].astype(bool)).sum())}}


def open_training_tables(name: str, folder: Any) -> Any:
    """A model's training table(s) in ``folder`` (``behavior.spark.build_training_table``): one
    ``TrainingTable``, or intent's ``{"users": …, "sessions": …}``."""
    from pathlib import Path

    from shopsight.behavior.models.streaming import TrainingTable

    if isinstance(folder, (TrainingTable, dict)):
        return folder
    parts = getattr(model_class(name), "table_parts", None)
    if parts:
        return {p: TrainingTable.open(Path(folder) / p) for p in parts}
    return TrainingTable.open(folder)


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

    fit (``fit_table``) → ``evaluation.evaluate_table`` → save. No ``scores.parquet`` is
    written (the table holds snapshots, not the latest events): run ``shopsight score`` after it.
    Churn, intent (two tables: users and sessions) and risk train from tables.

    Returns:
        ``{"name", "version", "train_seconds", "card"}``; the card's ``training_table`` says where,
        how many rows per split and how much the reader held at once.
    """
    from shopsight.behavior.models.common import ModelError
    from shopsight.behavior.models.evaluation import evaluate_table

    if name not in ("churn", "intent", "risk"):
        raise ModelError(f"the {name} model does not train from a training table; train it from events")
    tables = open_training_tables(name, table)
    cls = model_class(name)
    with ws.writer("train"):
        labels, analyst = training_labels(ws, cls)
        model = cls(**params, **({"settings": settings} if settings is not None else {}))
        model.fit_table(tables, progress=progress, buffer_rows=buffer_rows)
        card = evaluate_table(model, tables, labels).card
        parts = tables if isinstance(tables, dict) else {"": tables}
        first = next(iter(parts.values()))
        m = first.manifest
        card["data_cutoff"] = m["last_event"]
        card["data_batches"] = [b["id"] for b in ws.batches()] or None
        card["feature_profile"] = None  # drift profiles come from events; a table holds snapshots
        rows = {p: dict(t.manifest["rows"]) for p, t in parts.items()}
        card["training_table"] = {"folder": str(first.folder.parent if "" not in parts else first.folder),
                                  "rows": rows.get("", rows), "users": m["users"], "source": m["source"], "engine": m["engine"],
                                  "cutoff": m["cutoff"], "train_asofs": m.get("train_asofs"), "streaming": _stream_card(model)}
        card.update(_analyst_card(analyst))
        card.update(card_extra or {})
        version = model.save(ws, card=card, scores=None)
    return {"name": name, "version": version, "train_seconds": card.get("train_seconds"), "card": card}


def _stream_card(model: Any) -> Any:
    """How the streamed fit(s) read their table: one record (churn), one per net (intent), one per fold net (risk)."""
    if getattr(model, "stream_record_", None) is not None:
        return model.stream_record_.to_card()
    records = getattr(model, "stream_records_", None)
    if isinstance(records, dict):
        return {k: r.to_card() for k, r in records.items()}
    return [r.to_card() for r in records or []] or None


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
