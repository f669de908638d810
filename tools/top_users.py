"""top_users: which users score highest by churn, fraud risk or purchase intent?"""

from __future__ import annotations

import re
from typing import Any, Literal, Mapping

import pandas as pd

from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, num, unavailable
from shopsight.tools.words import count, pct
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_id, need_number

MAX_TOP = 20
METRICS = ("churn", "risk", "intent")


def latest_scores(ctx: ToolContext, metric: str) -> tuple[pd.DataFrame, str]:
    """The newest saved per-user scores of a model and its ``name@version``; WorkspaceError if none."""
    from shopsight.behavior.models import registry

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
    users = [{"rank": i + 1, "user_id": r.user_id, "probability": num(r.probability, 3)}
             for i, r in enumerate(ranked.itertuples(index=False))]
    return {
        "metric": metric,
        "filters": {k: v for k, v in {"category": category, "country": country}.items() if v},
        "users": users,
        "n_scored": int(len(scores)),
        "citations": {"model": model, "users": [u["user_id"] for u in users]},
    }


_RANKED_BY = {"churn": "most likely to churn", "risk": "with the highest fraud risk", "intent": "most likely to buy soon"}


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """Leads with the top of the ranking, then the whole list in order with each probability."""
    users = r.get("users") or []
    scope = " and ".join(f"{k} {v}" for k, v in (r.get("filters") or {}).items())
    who = _RANKED_BY.get(str(r.get("metric")), f"by {r.get('metric')}")
    if not users:
        return f"No users{' in ' + scope if scope else ''} have a {r.get('metric')} score yet."
    top = users[0]
    tied = [u for u in users if pct(u["probability"]) == pct(top["probability"])]
    if len(tied) > 1:  # ten users at 98.6%: none of them is "the" most likely
        lead = (f"{'All' if len(tied) == len(users) else len(tied)} of the top {len(users)} users {who}{' in ' + scope if scope else ''} "
                f"are tied at {pct(top['probability'])}")
        text = f"{lead}, of {count(r.get('n_scored'), 'scored user')}: "
    else:
        text = (f"{top['user_id']} is the user {who}{' in ' + scope if scope else ''} ({pct(top['probability'])}); "
                f"the top {len(users)} of {count(r.get('n_scored'), 'scored user')}: ")
    return text + ", ".join(f"{u['rank']}. {u['user_id']} ({pct(u['probability'])})" for u in users) + "."


_RANKED = re.compile(r"(?<![\w.])(\d{1,3})[.)]\s+(u\d{2,})\b", re.I)  # "2. u00212" in a ranking


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A ranking shows its first five users in order and the top probability; "2. uX" must be rank 2's user."""
    users = [u for u in r.get("users") or [] if isinstance(u, dict)]
    if not users:
        return []
    facts = need_id(users[0].get("user_id"), "top user") + need_number(users[0].get("probability"), "top probability")
    for u in users[1:5]:  # none silently dropped
        facts += need_id(u.get("user_id"), f"rank {u.get('rank')} user")
    for u in users:  # "2. u00212": a numbered user is the one at that rank, not another
        rank, uid = int(u.get("rank", 0)), str(u.get("user_id", "")).lower()
        facts.append(KeyFact(f"rank {rank} is {u.get('user_id')}",
                             lambda a, rank=rank, uid=uid: all(o.lower() == uid for r, o in _RANKED.findall(a) if int(r) == rank)))
    return facts


def remember(args: Mapping[str, Any], r: Mapping[str, Any], state: ConversationState) -> None:
    if r.get("users"):
        state.last_ranked = [u["user_id"] for u in r["users"]]
        state.last_user_ids = []  # "their churn?" next is about the ranked users, not a user asked about before
        state.last_metric = args.get("metric")
        state.last_call = {"name": "top_users", "args": dict(args)}


def _ranking(metric: str):
    def args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any]:
        return {"metric": metric, "limit": ent.limit or 10} | ent.filters("category", "country")

    return args


TOOL = ToolSpec(
    func=top_users,
    render=render,
    key_facts=key_facts,
    remember=remember,
    repeatable=frozenset({"category", "country"}),
    routes=(
        Route(
            label="top_churn", metric="churn", args=_ranking("churn"),
            examples=(
                "top {n} users most likely to churn", "which users are about to churn?", "who is most likely to leave?",
                "list the biggest flight risks", "top {n} most at risk of churning", "which customers are lapsing?",
                "rank users by churn", "who will we lose next month?", "show {n} users with the highest churn probability",
                "which {c} shoppers are likely to churn?", "top {n} churners", "most at-risk customers for retention",
                "who should get a win-back campaign?", "which users have gone quiet?",
            ),
        ),
        Route(
            label="top_risk", metric="risk", args=_ranking("risk"),
            examples=(
                "which users look like fraud {t}?", "top {n} riskiest users", "who are the most suspicious users?",
                "rank users by fraud risk", "list likely fraudsters", "top {n} most at risk of fraud", "which accounts should we review for fraud?",
                "show the highest fraud scores", "which orders look fraudulent {t}?", "who has the highest chargeback risk?",
                "top {n} users by risk score", "most suspicious shoppers in {c}", "which users should we block?", "top {n} most at risk",
            ),
        ),
        Route(
            label="top_intent", metric="intent", args=_ranking("intent"),
            examples=(
                "who is most likely to buy?", "top {n} users by purchase intent", "which users are ready to buy?",
                "rank users by intent", "who should we send a coupon to?", "hottest leads {t}", "which shoppers will convert soon?",
                "top {n} buyers-to-be in {c}", "which users are about to purchase?", "show users with the highest intent",
                "list {n} users likely to order", "who will buy {c} next?",
            ),
        ),
    ),
)
