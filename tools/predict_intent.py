"""predict_intent: is this user about to buy, and what? Probability, likely categories, reasons."""

from __future__ import annotations

import re
from typing import Any

from shopsight.tools.context import ToolContext
from shopsight.tools.explain import explain_user, render_score, score_facts
from shopsight.tools.registry import Route, ToolSpec, user_args


def predict_intent(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Is this user about to buy? Purchase-intent probability, top factors and evidence sessions.

    Use when the question asks whether or what a user will buy soon ("will u00042 buy?").

    Args:
        user_id: The user's id, e.g. "u00042".
    """
    return explain_user(ctx, "intent", user_id)


TOOL = ToolSpec(
    func=predict_intent,
    render=render_score,
    key_facts=score_facts,
    metric="intent",
    metric_words=re.compile(r"\bintent\b|\bbuy\b|\bbuying\b|purchase\s+(?:intent|soon|probability|likelihood)|\bconvert\b", re.I),
    routes=(
        Route(
            label="intent",
            per_user=True,
            metric="intent",
            args=user_args,
            examples=(
                "will {u} buy soon?", "is {u} about to purchase?", "purchase intent of {u}", "what is {u} likely to buy?",
                "how likely is {u} to order this week?", "is {u} ready to buy?", "buying intent for {u}", "will {u} convert?",
                "what is {u} about to buy?", "chance that {u} makes a purchase", "intent score for {u}", "is {u} in the market for {c}?",
                "predict whether {u} will buy", "is {u} going to check out", "how hot a lead is {u}", "likelihood of purchase for {u}",
            ),
            followups=("and will she buy?", "what about his purchase intent?", "is he about to buy?", "and their intent?"),
        ),
    ),
)
