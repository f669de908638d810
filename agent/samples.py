"""Sample questions for a workspace, one per model, about users its models actually rank high (for `shopsight demo`)."""

from __future__ import annotations

import pandas as pd

from shopsight.behavior.workspace import Workspace, WorkspaceError

TEMPLATES = {
    "churn": "why is {user} likely to churn?",
    "intent": "what is {user} about to buy?",
    "risk": "is {user} a fraud risk?",
}


def sample_questions(ws: Workspace) -> list[str]:
    """One question per model about the buyer it scores highest (any buyer if a model has no scores).

    Buyers are preferred because their histories give the explanation something to cite.
    """
    events = ws.load_events(columns=["user_id", "event"])
    buyers = sorted(events.loc[events["event"] == "purchase", "user_id"].astype(str).unique())
    if not buyers:
        buyers = sorted(events["user_id"].astype(str).unique())
    if not buyers:
        raise WorkspaceError(f"workspace '{ws.root}' has no users to ask about")
    from shopsight.behavior.models import registry

    questions = []
    for metric, template in TEMPLATES.items():
        user = buyers[0]
        try:
            scores = registry.load_scores(ws, metric)
        except WorkspaceError:
            scores = pd.DataFrame(columns=["user_id", "probability"])
        ranked = scores.assign(user_id=scores["user_id"].astype(str))
        ranked = ranked[ranked["user_id"].isin(set(buyers))].sort_values(["probability", "user_id"], ascending=[False, True])
        if len(ranked):
            user = str(ranked["user_id"].iloc[0])
        questions.append(template.format(user=user))
    return questions
