"""score_risk: is this user or order fraudulent? Probability, factors, rule signals, evidence."""

from __future__ import annotations

import re
from typing import Any, Mapping

from shopsight.behavior.models.decision import load_policy
from shopsight.behavior.workspace import WorkspaceError
from shopsight.tools.context import ToolContext, mask_text, no_such_order, num, unavailable
from shopsight.tools.explain import compact_explanation, explain_user, render_score, score_facts
from shopsight.tools.registry import ConversationState, Entities, KeyFact, Route, ToolSpec, need_number, need_phrase, user_args
from shopsight.tools.words import pct, words_for


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
        raw = model.score_order(ctx.get_events(), str(order_id))
        out = compact_explanation(raw)
        out.update(order_decision(ctx, model, raw))
        return out
    if not user_id:
        return {"error": "need a user_id or an order_id", "hint": "e.g. score_risk(user_id='u00042')"}
    return explain_user(ctx, "risk", user_id)


def order_decision(ctx: ToolContext, model: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The action for a scored order (allow / review / block), the rules that fired with their evidence, and
    the validation precision of the threshold crossed; a note instead when the model has no thresholds."""
    card = getattr(model, "card_", None)
    policy = load_policy(ctx.workspace, card) if card else None
    if policy is None:
        return {"decision_note": "this risk model has no decision thresholds: retrain it (`shopsight train risk`) "
                                 "or set them (`shopsight risk thresholds --review 0.3 --block 0.9`)"}
    d = policy.decide(float(raw["probability"]), raw.get("rules") or [])
    return {
        "decision": d.decision,
        "decided_by": d.decided_by,
        "forced_by": _masked_rule(d.forced_by) if d.forced_by else None,
        "decision_threshold": d.threshold,
        "expected_precision": d.expected_precision,
        "thresholds": {"review": num(policy.review, 3), "block": num(policy.block, 3), "source": policy.source},
        "rules_fired": [_masked_rule(r) for r in d.rules_fired][:4],
    }


def _masked_rule(r: Mapping[str, Any]) -> dict[str, Any]:
    out = {"name": str(r["name"]), "detail": mask_text(str(r.get("detail", ""))), "evidence": [str(e) for e in r.get("evidence") or []][:5]}
    if r.get("forces"):
        out["forces"] = str(r["forces"])
    return out


_ACTION = {"allow": "allow", "review": "hold for review", "block": "block"}


def decision_sentence(r: Mapping[str, Any]) -> str:
    """The decision in words: what to do, why (the hard rule forcing it, or the threshold and its precision)."""
    d = r.get("decision")
    if not d:
        return ""
    subject = f"order {r['order_id']}" if r.get("order_id") else f"user {r.get('user_id')}"
    if r.get("forced_by"):
        f = r["forced_by"]
        ev = f"; evidence: {', '.join(f['evidence'])}" if f.get("evidence") else ""
        return (f"Decision for {subject}: {_ACTION[d]}. The {words_for(f['name'])} rule forces a {d} whatever the model says "
                f"({f.get('detail')}{ev}).")
    if d == "allow":
        return f"Decision for {subject}: allow (below the review threshold of {pct(r['thresholds']['review'])})."
    prec = r.get("expected_precision")
    said = f" At that threshold {pct(prec)} of the accounts flagged on validation data were fraud." if isinstance(prec, (int, float)) else \
        " The model had no labels, so no precision can be promised."
    return f"Decision for {subject}: {_ACTION[d]}: the fraud-risk probability is at or above the {d} threshold of {pct(r['decision_threshold'])}.{said}"


def render(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """A decision leads (with the rule forcing it), then the score, its reasons and evidence."""
    text = render_score(args, r)
    said = decision_sentence(r)
    fired = [x for x in r.get("rules_fired") or [] if not r.get("forced_by") or x["name"] != r["forced_by"]["name"]]
    if said and fired:
        said += " Rules that fired: " + "; ".join(
            f"{words_for(x['name'])} ({x['detail']}" + (f"; evidence: {', '.join(x['evidence'][:3])}" if x.get("evidence") else "") + ")"
            for x in fired) + "."
    return f"{said} {text}".strip() if said else text


_DECISION_WORD = {d: re.compile(rf"\b{d}(?:ed|s|ing)?\b", re.I) for d in ("allow", "review", "block")}
_FORCED = re.compile(r"\b(forc\w*|whatever the model|regardless)\b", re.I)


def key_facts(args: Mapping[str, Any], r: Mapping[str, Any], question: str) -> list[KeyFact]:
    """A score's facts; with a decision, the decision word, and a forced one says it was forced by a rule."""
    facts = score_facts(args, r, question)
    d = r.get("decision")
    if d:
        facts += need_phrase(_DECISION_WORD[d], f"the decision ({d})")
        if r.get("forced_by"):
            facts += need_phrase(_FORCED, f"that the {r['forced_by']['name']} rule forced the decision")
        elif isinstance(r.get("expected_precision"), (int, float)):
            facts += need_number(r["expected_precision"], "the expected precision at the threshold")
    return facts


def _args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any] | None:
    """An order named (or the conversation's last order, with no user since) is the subject; else the user."""
    if ent.order_ids or (not ent.user_ids and state.last_order_id and not state.last_user_ids):
        return {"order_id": (ent.order_ids or [state.last_order_id])[0]}
    return user_args(ent, state, question)


TOOL = ToolSpec(
    func=score_risk,
    render=render,
    key_facts=key_facts,
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
