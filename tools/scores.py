"""Tools that call the trained models: one user's intent, churn or risk with reasons, and cohort rankings."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd

from behavior.workspace import WorkspaceError
from tools.context import ToolContext, mask_text, no_such_user, unavailable
from tools.users import _day, _num

MAX_FACTORS = 3
MAX_EVIDENCE = 3
MAX_TOP = 20
METRICS = ("churn", "risk", "intent")


def _compact_explanation(raw: dict[str, Any]) -> dict[str, Any]:
    """A model's explain() dict cut to what an answer needs, numbers rounded, texts masked."""
    out: dict[str, Any] = {"model": str(raw.get("model", "")), "user_id": raw.get("user_id")}
    if raw.get("order_id") is not None:
        out["order_id"] = str(raw["order_id"])
    out["probability"] = _num(raw.get("probability"), 3)
    if raw.get("score") is not None:
        out["score"] = _num(raw.get("score"), 3)
    factors = []
    for f in list(raw.get("factors") or [])[:MAX_FACTORS]:
        value = f.get("value")
        factors.append(
            {
                "name": str(f.get("name")),
                "value": _num(value, 3) if isinstance(value, (int, float)) else mask_text(str(value)),
                "direction": str(f.get("direction", "")),
            }
        )
    out["factors"] = factors
    if raw.get("next_categories"):  # intent: what the user is most likely to buy next
        out["next_categories"] = [{"category": str(c["category"]), "share": _num(c.get("share"), 3)}
                                  for c in raw["next_categories"][:3]]
    rules = []
    for r in list(raw.get("rules") or []):
        if isinstance(r, dict) and "fired" in r and not r["fired"]:
            continue  # a rule that did not fire is no reason for the score
        rules.append(mask_text(r if isinstance(r, str) else str(r.get("name") or r.get("rule") or r)))
    out["rules"] = rules[:MAX_FACTORS]
    evidence = []
    for e in list(raw.get("evidence") or [])[:MAX_EVIDENCE]:
        detail = str(e.get("detail", ""))
        evidence.append(
            {"session_id": str(e.get("session_id")), "day": _day(e.get("ts")), "event": str(e.get("event", "")),
             "detail": mask_text(detail)}
        )
    out["evidence"] = evidence
    sessions = list(dict.fromkeys(e["session_id"] for e in evidence if e["session_id"] != "None"))
    out["citations"] = {"sessions": sessions, "model": out["model"]}
    return out


def _explain_user(ctx: ToolContext, name: str, user_id: str) -> dict[str, Any]:
    user_id = str(user_id)
    if not ctx.has_user(user_id):
        return no_such_user(ctx, user_id)
    try:
        model = ctx.model(name)
    except WorkspaceError as exc:
        return unavailable(f"{name} model", exc)
    return _compact_explanation(model.explain(ctx.get_events(), user_id))


def predict_intent(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Is this user about to buy? Purchase-intent probability, top factors and evidence sessions.

    Use when the question asks whether or what a user will buy soon ("will u00042 buy?").

    Args:
        user_id: The user's id, e.g. "u00042".
    """
    return _explain_user(ctx, "intent", user_id)


def predict_churn(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Will this user stop buying? Churn probability, top factors and evidence sessions.

    Use for churn, lapsing, leaving, "flight risk" or retention questions about ONE user
    ("why is u00042 likely to churn?"). "Flight risk" means churn, not fraud.

    Args:
        user_id: The user's id, e.g. "u00042".
    """
    return _explain_user(ctx, "churn", user_id)


def score_risk(ctx: ToolContext, user_id: str | None = None, order_id: str | None = None) -> dict[str, Any]:
    """Is this user or order fraudulent? Fraud-risk probability, factors, rule signals, evidence.

    Use for fraud, chargeback or suspicious-activity questions about ONE user or ONE order.
    Order ids look like "o000123" and go in order_id, never in user_id.

    Args:
        user_id: The user's id, e.g. "u00042".
        order_id: The order's id, e.g. "o000123".
    """
    if order_id:
        events = ctx.get_events()
        if "order_id" not in events.columns or not (events["order_id"].astype(str) == str(order_id)).any():
            return {"error": "no such order", "order_id": str(order_id),
                    "hint": "order ids look like 'o000123'; check the id, or ask about the user instead"}
        try:
            model = ctx.model("risk")
        except WorkspaceError as exc:
            return unavailable("risk model", exc)
        if not hasattr(model, "score_order"):
            return {"error": "order scoring unavailable", "hint": "this risk model scores users only"}
        return _compact_explanation(model.score_order(events, str(order_id)))
    if not user_id:
        return {"error": "need a user_id or an order_id", "hint": "e.g. score_risk(user_id='u00042')"}
    return _explain_user(ctx, "risk", user_id)


def latest_scores(ctx: ToolContext, metric: str) -> tuple[pd.DataFrame, str]:
    """The newest saved per-user scores of a model and its ``name@version``; WorkspaceError if none."""
    from behavior.models import registry

    version = registry.latest_version(ctx.workspace, metric)
    if version is None:
        raise WorkspaceError(f"no {metric} model in workspace '{ctx.workspace.root}': run `shopsight train {metric}` first")
    return registry.load_scores(ctx.workspace, metric, version), f"{metric}@{version}"


def top_users(
    ctx: ToolContext,
    metric: Literal["churn", "risk", "intent"],
    limit: int = 10,
    category: str | None = None,
    country: str | None = None,
) -> dict[str, Any]:
    """Which users score highest? A ranked list of users by churn, fraud risk or purchase intent.

    Use for cohort questions ("top 10 most at risk", "which users look like fraud?",
    "who is most likely to buy?"), never for one named user.

    Args:
        metric: "churn", "risk" (fraud) or "intent" (purchase).
        limit: How many users (1-20).
        category: Only users whose top category is this one.
        country: Only users seen in this country code.
    """
    if metric not in METRICS:
        return {"error": f"unknown metric '{metric}'", "hint": f"metric is one of {', '.join(METRICS)}"}
    limit = max(1, min(int(limit or 10), MAX_TOP))
    try:
        scores, model = latest_scores(ctx, metric)
    except WorkspaceError as exc:
        return unavailable(f"{metric} scores", exc)
    scores = scores.assign(user_id=scores["user_id"].astype(str))
    if category:
        feats = ctx.features()
        cats = feats["top_category"].astype("string").str.lower()
        keep = set(cats[cats == category.lower()].index.astype(str))
        scores = scores[scores["user_id"].isin(keep)]
    if country:
        events = ctx.get_events()
        if "country" in events.columns:
            seen = events.loc[events["country"].astype(str).str.upper() == country.upper(), "user_id"].astype(str)
            scores = scores[scores["user_id"].isin(set(seen))]
    ranked = scores.sort_values(["probability", "user_id"], ascending=[False, True]).head(limit)
    users = [
        {"rank": i + 1, "user_id": r.user_id, "probability": _num(r.probability, 3)}
        for i, r in enumerate(ranked.itertuples(index=False))
    ]
    return {
        "metric": metric,
        "filters": {k: v for k, v in {"category": category, "country": country}.items() if v},
        "users": users,
        "n_scored": int(len(scores)),
        "citations": {"model": model, "users": [u["user_id"] for u in users]},
    }
