"""score_risk: is this user or order fraudulent? Probability, factors, rule signals, evidence."""

from __future__ import annotations

import re
from typing import Any

from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, no_such_order, unavailable
from shopsight.tools.explain import compact_explanation, explain_user, render_score, score_facts
from shopsight.tools.registry import ConversationState, Entities, Route, ToolSpec, user_args


def score_risk(ctx: ToolContext, user_id: str | None = None, order_id: str | None = None) -> dict[str, Any]:
    """Is this user or order fraudulent? Fraud-risk probability, factors, rule signals, evidence.

    Use for fraud, chargeback or suspicious-activity questions about ONE user or ONE order.
    Order ids look like "o000123" and go in order_id, never in user_id.

    Args:
        user_id: The user's id, e.g. "u00042".
        order_id: The order's id, e.g. "o000123".
    """
    if order_id:
        if not ctx.has_order(str(order_id)):
            return no_such_order(ctx, order_id)
        try:
            model = ctx.model("risk")
        except WorkspaceError as exc:
            return unavailable("risk model", exc)
        if not hasattr(model, "score_order"):
            return {"error": "order scoring unavailable", "hint": "this risk model scores users only"}
        return compact_explanation(model.score_order(ctx.get_events(), str(order_id)))
    if not user_id:
        return {"error": "need a user_id or an order_id", "hint": "e.g. score_risk(user_id='u00042')"}
    return explain_user(ctx, "risk", user_id)


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any] | None:
    """An order named (or the conversation's last order, with no user since) is the subject; else the user."""
    if ent.order_ids or (not ent.user_ids and state.last_order_id and not state.last_user_ids):
        return {"order_id": (ent.order_ids or [state.last_order_id])[0]}
    return user_args(ent, state, question)


TOOL = ToolSpec(
    func=score_risk,
    render=render_score,
    key_facts=score_facts,
    metric="risk",
    metric_words=re.compile(r"\bfraud\w*|suspicious|chargeback|(?<!flight )(?<!churn )(?<!retention )\brisk\b(?!\s+of\s+(?:churn|leaving))", re.I),
    routes=(
        Route(
            label="risk",
            per_user=True,
            takes_order=True,
            metric="risk",
            args=_args,
            examples=(
                "is {u} fraudulent?", "fraud risk for {u}", "does {u} look like fraud?", "is order {o} fraudulent?",
                "risk score of {o}", "is {o} suspicious?", "check {u} for fraud", "chargeback risk of {u}",
                "is {u} a scammer?", "fraud score for order {o}", "should we block {u}?", "suspicious activity on {u}",
                "is order {o} safe to ship?", "how risky is {u}?", "is {u} using stolen cards", "explain the risk score of {o}",
                "fraud probability for {u}", "review order {o} for fraud",
            ),
            followups=("and her risk?", "what about his fraud risk?", "and their risk score?", "is she fraudulent too?"),
        ),
    ),
)
