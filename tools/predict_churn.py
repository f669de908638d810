"""predict_churn: will this user stop buying? Probability, reasons and evidence sessions."""

from __future__ import annotations

import re
from typing import Any

from shopsight.tools.context import ToolContext
from shopsight.tools.explain import explain_user, render_score, score_facts
from shopsight.tools.registry import Route, ToolSpec, user_args


def predict_churn(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Will this user stop buying? Churn probability, top factors and evidence sessions.

    Use for churn, lapsing, leaving, "flight risk" or retention questions about ONE user
    ("why is u00042 likely to churn?"). "Flight risk" means churn, not fraud.

    Args:
        user_id: The user's id, e.g. "u00042".
    """
    return explain_user(ctx, "churn", user_id)


TOOL = ToolSpec(
    func=predict_churn,
    render=render_score,
    key_facts=score_facts,
    metric="churn",
    metric_words=re.compile(r"\bchurn\w*|flight\s+risk|\blaps\w+|\bleav(?:e|es|ing)\b(?!\s+(?:a\s+)?reviews?)|stop\s+(?:buying|shopping)"
                            r"|retention|come\s+back|\bdefect|\bwe\s+lose\b", re.I),
    routes=(
        Route(
            label="churn",
            per_user=True,
            metric="churn",
            args=user_args,
            examples=(
                "why is {u} likely to churn?", "will {u} churn?", "is {u} a flight risk?", "churn probability of {u}",
                "is {u} going to stop buying?", "will we lose {u}?", "retention risk for {u}", "is {u} lapsing?",
                "is {u} about to leave us?", "churn score for {u}", "has {u} gone quiet for good?", "how likely is {u} to come back?",
                "is {u} at risk of churning", "will {u} stop shopping with us", "is {u} disengaging", "is customer {u} a flight risk",
                "risk of {u} leaving", "is {u} likely to defect",
            ),
            followups=("and her churn?", "will he churn?", "and their churn risk?", "is she a flight risk as well?"),
        ),
    ),
)
