"""From a fraud probability to an action: the risk model's ``review`` / ``block`` thresholds and hard rules.

The thresholds are chosen at training time on the validation data (every training account's
out-of-fold probability, the scores the calibration and the F1 threshold come from too) and
stored on the model card with the precision and recall each gives there. A risk officer may
set them (``shopsight risk thresholds --review 0.3 --block 0.9``): that writes a thresholds
record inside the model's version folder (``models/risk/<version>/thresholds.json``), which
names the model version it belongs to, keeps the history of earlier settings, and carries the
validation precision and recall of the new values. A retrained model starts again from its
own card's thresholds: a threshold means nothing on another model's scores.

Hard rules force a decision whatever the model says (a card-testing burst blocks); the
decision says so (``forced_by``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from shopsight.behavior.workspace import Workspace, WorkspaceError, write_json_atomic

THRESHOLDS_FILE = "thresholds.json"
DECISIONS: tuple[str, ...] = ("allow", "review", "block")
# Validation precision the default block threshold must reach: blocking stops an honest customer's order.
BLOCK_PRECISION = 0.95
# Honest validation accounts scoring below this are stored as a count, not one by one (the card stays small).
KEEP_SCORES_ABOVE = 0.01
# Without labels the score is the anomaly percentile: review the most unusual 2 %, block the most unusual 0.5 %.
UNSUPERVISED_REVIEW = 0.98
UNSUPERVISED_BLOCK = 0.995
# Rules that decide on their own, and the decision each forces.
HARD_RULES: dict[str, str] = {"card_testing_burst": "block", "bot_velocity": "review"}


class ThresholdError(ValueError):
    """Thresholds a user gave that cannot be used (out of range, block below review); the message says why."""


@dataclass(frozen=True)
class Decision:
    """One decision: the action, what decided it, and what the threshold promises on validation data."""

    decision: str
    probability: float
    decided_by: str  # "model" or "rule"
    threshold: float | None  # the threshold the probability crossed (None: allow, or forced)
    expected_precision: float | None  # validation precision at that threshold (None: allow, or no labels)
    forced_by: dict[str, Any] | None = None  # the hard rule {name, forces, detail, evidence}
    rules_fired: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision, "decided_by": self.decided_by, "probability": round(float(self.probability), 4),
            "threshold": None if self.threshold is None else round(float(self.threshold), 4),
            "expected_precision": None if self.expected_precision is None else round(float(self.expected_precision), 4),
            "forced_by": self.forced_by, "rules_fired": self.rules_fired,
        }


# --- validation scores and what a threshold gives on them ------------------------------------


def validation_scores(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The validation data a card keeps to price any threshold later: every fraud's score, the honest ones above 0.01."""
    p = np.asarray(p, dtype="float64")
    y = np.asarray(y, dtype="int64")
    honest = p[y == 0]
    return {
        "fraud": sorted(round(float(v), 5) for v in p[y == 1]),
        "honest_above": sorted(round(float(v), 5) for v in honest[honest >= KEEP_SCORES_ABOVE]),
        "honest_below": int((honest < KEEP_SCORES_ABOVE).sum()),
        "n": int(len(y)),
    }


def at_threshold(scores: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """Precision, recall and the share of accounts flagged at ``p >= threshold`` on the stored validation scores.

    Raises:
        ThresholdError: a threshold below the stored range (honest scores below it are only counted).
    """
    if threshold < KEEP_SCORES_ABOVE:
        raise ThresholdError(f"a threshold below {KEEP_SCORES_ABOVE} flags nearly every account; give one between {KEEP_SCORES_ABOVE} and 1")
    fraud = np.asarray(scores["fraud"], dtype="float64")
    honest = np.asarray(scores["honest_above"], dtype="float64")
    tp = int((fraud >= threshold).sum())
    fp = int((honest >= threshold).sum())
    n_fraud = len(fraud)
    return {
        "threshold": round(float(threshold), 5),  # the scores' precision: the stated threshold gives the stated counts
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,  # None: nothing flagged, precision undefined
        "recall": round(tp / n_fraud, 4) if n_fraud else None,
        "flagged": tp + fp,
        "flagged_share": round((tp + fp) / max(int(scores["n"]), 1), 4),
        "frauds_caught": tp,
        "frauds": n_fraud,
    }


def choose_thresholds(p_val: np.ndarray, y_val: np.ndarray, *, review: float, source: str) -> dict[str, Any]:
    """The card's ``decision_thresholds``: review at ``review`` (the model's F1-best threshold), block at
    the lowest threshold whose validation precision reaches :data:`BLOCK_PRECISION` (never below review).

    Args:
        p_val: validation probabilities (the training accounts' out-of-fold scores).
        y_val: their fraud labels.
        review: the review threshold (chosen on the same data by the caller).
        source: what the validation data are, in words (the card says it).
    """
    scores = validation_scores(p_val, y_val)
    candidates = sorted({v for v in scores["fraud"] if v >= max(review, KEEP_SCORES_ABOVE)})
    block = next((t for t in candidates if (at_threshold(scores, t)["precision"] or 0.0) >= BLOCK_PRECISION), None)
    how = f"the lowest threshold with validation precision at least {BLOCK_PRECISION:g}"
    if block is None:  # no threshold is that precise on validation: block only at the top fraud score
        block = max(candidates) if candidates else max(review, 0.99)
        how = f"no threshold reaches validation precision {BLOCK_PRECISION:g}: the highest fraud account's score"
    review = max(round(float(review), 5), KEEP_SCORES_ABOVE)
    return {
        "supervised": True,
        "chosen_on": source,
        "review": at_threshold(scores, review) | {"how": "the F1-best threshold on the validation accounts"},
        "block": at_threshold(scores, block) | {"how": how},
        "hard_rules": dict(HARD_RULES),
        "validation_scores": scores,
    }


def unsupervised_thresholds() -> dict[str, Any]:
    """Thresholds on the anomaly percentile when the model had no labels: no precision can be promised."""
    def one(t: float) -> dict[str, Any]:
        return {"threshold": t, "precision": None, "recall": None, "flagged_share": round(1 - t, 4),
                "how": f"the most unusual {100 * (1 - t):g}% of training accounts (no labels: precision unknown)"}

    return {"supervised": False, "chosen_on": "no labels: anomaly percentiles of the training accounts",
            "review": one(UNSUPERVISED_REVIEW), "block": one(UNSUPERVISED_BLOCK), "hard_rules": dict(HARD_RULES),
            "validation_scores": None}


# --- the thresholds in force for a saved model -------------------------------------------------


@dataclass(frozen=True)
class DecisionPolicy:
    """The thresholds in force for one model version, and where they come from."""

    model: str  # "risk@v3"
    review: float
    block: float
    review_precision: float | None
    block_precision: float | None
    review_recall: float | None
    block_recall: float | None
    source: str  # "card" (chosen on validation at training) or "set by <who> at <time>"
    hard_rules: Mapping[str, str] = field(default_factory=lambda: dict(HARD_RULES))

    def decide(self, probability: float, rules: Sequence[Mapping[str, Any]] = ()) -> Decision:
        """The action for a probability and the rules judged for the same order (fired ones force theirs)."""
        fired = [_rule_summary(r) for r in rules if r.get("fired")]
        p = round(float(probability), 4)  # one value, as stored and as said ("46.2%" beside "46.3%" otherwise)
        by_model = "block" if p >= self.block else "review" if p >= self.review else "allow"
        forced = None
        for r in fired:
            forces = self.hard_rules.get(r["name"])
            if forces and DECISIONS.index(forces) > DECISIONS.index(by_model) and (
                    forced is None or DECISIONS.index(forces) > DECISIONS.index(forced["forces"])):
                forced = {**r, "forces": forces}
        if forced is not None:
            return Decision(forced["forces"], p, "rule", None, None, forced, fired)
        if by_model == "allow":
            return Decision("allow", p, "model", None, None, None, fired)
        t = self.block if by_model == "block" else self.review
        precision = self.block_precision if by_model == "block" else self.review_precision
        return Decision(by_model, p, "model", t, precision, None, fired)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "hard_rules": dict(self.hard_rules),
                "review": {"threshold": self.review, "precision": self.review_precision, "recall": self.review_recall},
                "block": {"threshold": self.block, "precision": self.block_precision, "recall": self.block_recall}}


def _rule_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": str(r.get("name")), "detail": str(r.get("detail", "")), "evidence": [str(e) for e in (r.get("evidence") or [])][:5]}


def policy_from(model_label: str, record: Mapping[str, Any], source: str) -> DecisionPolicy:
    rv, bl = record["review"], record["block"]
    return DecisionPolicy(model=model_label, review=float(rv["threshold"]), block=float(bl["threshold"]),
                          review_precision=rv.get("precision"), block_precision=bl.get("precision"),
                          review_recall=rv.get("recall"), block_recall=bl.get("recall"), source=source,
                          hard_rules=dict(record.get("hard_rules") or HARD_RULES))


def risk_card(ws: Workspace, version: str | None = None) -> dict[str, Any]:
    """The saved risk model's card (default: the latest version) without loading its weights."""
    from shopsight.behavior.models import registry

    path = registry.model_dir(ws, "risk", version) / registry.CARD
    return json.loads(path.read_text())


def thresholds_path(ws: Workspace, version: str):
    return ws.models_dir / "risk" / version / THRESHOLDS_FILE


def load_policy(ws: Workspace, card: Mapping[str, Any]) -> DecisionPolicy | None:
    """The thresholds in force for the saved risk model whose card is ``card``: the record a user set, else the card's.

    None for a card from before decision thresholds (retrain, or set them with ``shopsight risk thresholds``).
    """
    version = str(card.get("version"))
    label = f"risk@{version}"
    path = thresholds_path(ws, version)
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except ValueError as exc:
            raise WorkspaceError(f"{path} is not JSON ({exc}); set the thresholds again with `shopsight risk thresholds`") from exc
        if record.get("model") != label:
            raise WorkspaceError(f"{path} names the model {record.get('model')}, not {label}: set them again with `shopsight risk thresholds`")
        return policy_from(label, record, f"set by {record.get('set_by', 'a user')} at {record.get('time')}")
    chosen = card.get("decision_thresholds")
    if not chosen:
        return None
    return policy_from(label, chosen, f"chosen on validation data at training ({chosen.get('chosen_on')})")


def set_thresholds(ws: Workspace, card: Mapping[str, Any], *, review: float, block: float, set_by: str = "shopsight risk thresholds") -> dict[str, Any]:
    """Write the thresholds record of the saved risk model ``card`` describes; return it (with validation precision/recall).

    Raises:
        ThresholdError: a threshold outside (0, 1], block below review, or a model without validation scores
            (from before decision thresholds: retrain it).
    """
    for name, t in (("review", review), ("block", block)):
        if not 0.0 < float(t) <= 1.0:
            raise ThresholdError(f"--{name} {t} is not a probability: give a number in (0, 1], e.g. --{name} 0.3")
    if block < review:
        raise ThresholdError(f"--block {block} is below --review {review}: an order blocked must also be worth a review; give block >= review")
    chosen = card.get("decision_thresholds")
    version = str(card.get("version"))
    if not chosen:
        raise ThresholdError(f"risk@{version} was trained before decision thresholds and has no validation scores to price new ones; "
                             "retrain it with `shopsight train risk`")
    scores = chosen.get("validation_scores")
    if scores:
        rv, bl = at_threshold(scores, review), at_threshold(scores, block)
    else:  # unsupervised: a percentile threshold, no labels to measure it on
        rv = {"threshold": review, "precision": None, "recall": None}
        bl = {"threshold": block, "precision": None, "recall": None}
    path = thresholds_path(ws, version)
    history: list[dict[str, Any]] = []
    if path.exists():
        old = json.loads(path.read_text())
        history = [*old.get("history", []), {k: old[k] for k in ("review", "block", "time", "set_by") if k in old}]
    record = {"model": f"risk@{version}", "review": rv, "block": bl, "hard_rules": dict(chosen.get("hard_rules") or HARD_RULES),
              "chosen_on": chosen.get("chosen_on"), "set_by": set_by, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "card_thresholds": {"review": chosen["review"]["threshold"], "block": chosen["block"]["threshold"]},
              "history": history}
    write_json_atomic(path, record)
    return record
